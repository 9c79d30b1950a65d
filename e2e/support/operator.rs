//! The operator process under test: the real `mandate` binary, started per test and
//! scoped to the test's namespace, so a test can kill it mid-way and start it again.

use std::{path::PathBuf, process::Stdio, time::Duration};

use kube::{
    Api,
    api::{DynamicObject, PostParams},
};
use tokio::process::{Child, Command};

/// A running `mandate run`; killed when dropped.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
    args: Vec<String>,
    /// The loopback port its admission webhook serves on.
    pub webhook_port: u16,
    /// The loopback port of its `/metrics` and `/v1/crl`.
    pub metrics_port: u16,
    /// The loopback port of its decision service (HTTPS).
    pub decision_port: u16,
    /// Its stdout: the audit trail, one JSON object per line.
    pub audit_log: PathBuf,
    /// Whom it runs as.
    kubeconfig: PathBuf,
    /// `FAILPOINTS` for the next start (crash points, see `mandate::failpoint`).
    pub failpoints: Option<String>,
}

impl Operator {
    /// Starts `mandate run` watching only `namespace`, with any extra flags, and
    /// waits until its admission webhook records requesters in that namespace.
    ///
    /// Each operator serves its webhook on its own loopback port and registers
    /// configurations of its own (`mandate-<namespace>`) that select only its namespace,
    /// so tests running in parallel never route through each other's operators.
    pub async fn start(namespace: &str, extra: &[&str]) -> Operator {
        Self::start_as(namespace, extra, super::kubeconfig_path()).await
    }

    /// An operator watching every namespace, its CA in `ca_namespace`, probed through
    /// `probe_namespace`. Only for the tests run one at a time after the others
    /// (`cluster_wide::`): it would reconcile every other test's grants too.
    pub async fn start_cluster_wide(ca_namespace: &str, probe_namespace: &str, extra: &[&str]) -> Operator {
        let (port, metrics_port) = (free_port(), free_port());
        let mut args = loopback_args(ca_namespace, port, metrics_port);
        args.push(format!("--ca-secret-namespace={ca_namespace}"));
        args.extend(extra.iter().map(|s| s.to_string()));
        let op = Self::spawn(
            ca_namespace,
            args,
            0,
            port,
            metrics_port,
            super::kubeconfig_path(),
            None,
        );
        op.wait_webhook(probe_namespace).await;
        op
    }

    /// [`start`](Self::start), with the credentials of `kubeconfig` (for example one
    /// impersonating the ServiceAccount the install manifest creates).
    pub async fn start_as(namespace: &str, extra: &[&str], kubeconfig: PathBuf) -> Operator {
        let (port, metrics_port) = (free_port(), free_port());
        let mut args = loopback_args(namespace, port, metrics_port);
        args.push(format!("--watch-namespace={namespace}"));
        args.extend(extra.iter().map(|s| s.to_string()));
        let op = Self::spawn(namespace, args, 0, port, metrics_port, kubeconfig, None);
        op.wait_webhook(namespace).await;
        op
    }

    /// Waits until a dry-run ToolGrant created in `namespace` comes back with its
    /// requester recorded (the mutating pass is registered and known to the API server)
    /// and this process has applied its admission configurations. Polled, because no
    /// watch reports an API server's admission routing.
    pub async fn wait_webhook(&self, namespace: &str) {
        let client = super::client().await;
        let ar = kube::api::ApiResource::erase::<mandate::api::ToolGrant>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &ar);
        let probe: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "mandate.dev/v1alpha1", "kind": "ToolGrant",
            "metadata": { "name": "webhook-probe" },
            "spec": {
                "identityRef": { "name": "probe" },
                "taskRef": { "apiVersion": "v1", "kind": "Pod", "name": "probe" },
                "tools": [{ "name": "probe", "actions": ["read"] }],
                "purpose": "webhook readiness probe",
            },
        }))
        .expect("probe grant");
        let pp = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + super::TIMEOUT;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            // The mutating admission policy answers from the API server whether or not
            // this process is up yet, so also wait for this process to have applied its
            // admission configurations (as the webhook, served by the process, implied).
            let applied = self.log_text().contains("admission configurations applied");
            match api.create(&pp, &probe).await {
                Ok(obj) if obj.data["spec"].get("requester").is_some() && applied => return,
                Ok(obj) if obj.data["spec"].get("requester").is_some() => {
                    last = "this process has not applied its admission configurations yet".into()
                }
                Ok(_) => last = "created without a requester (webhook not routed yet)".into(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the operator's webhook did not come up in {namespace} within {:?}: {last}\n{}",
            super::TIMEOUT,
            self.log_text()
        );
    }

    fn spawn(
        namespace: &str,
        args: Vec<String>,
        n: u32,
        webhook_port: u16,
        metrics_port: u16,
        kubeconfig: PathBuf,
        failpoints: Option<String>,
    ) -> Operator {
        let dir = super::repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{namespace}-operator-{n}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let audit_log = dir.join(format!("{namespace}-operator-{n}.audit.jsonl"));
        let audit = std::fs::File::create(&audit_log).expect("audit log file");
        let decision_port = args
            .iter()
            .find_map(|a| a.strip_prefix("--decision-listen=127.0.0.1:"))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        // MANDATE_OPERATOR_WRAPPER runs the binary under a profiler (for example
        // `heaptrack -o target/bench/heap`); unset in tests and CI.
        let mut cmd = match std::env::var("MANDATE_OPERATOR_WRAPPER") {
            Ok(w) if !w.trim().is_empty() => {
                let mut words = w.split_whitespace();
                let mut c = Command::new(words.next().unwrap_or_default());
                c.args(words).arg(env!("CARGO_BIN_EXE_mandate"));
                c
            }
            _ => Command::new(env!("CARGO_BIN_EXE_mandate")),
        };
        if let Some(f) = &failpoints {
            cmd.env("FAILPOINTS", f);
        }
        let child = cmd
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("E2E_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .env("MANDATE_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::from(audit))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("mandate binary starts");
        Operator {
            child,
            log,
            args,
            webhook_port,
            metrics_port,
            decision_port,
            audit_log,
            kubeconfig,
            failpoints,
        }
    }

    /// Waits for the process to exit on its own (at a crash point), and returns whether
    /// it was aborted (SIGABRT), as a crash point does.
    pub async fn wait_crash(&mut self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let status = tokio::time::timeout(super::TIMEOUT, self.child.wait())
            .await
            .expect("the operator reached its crash point")
            .expect("exit status");
        status.signal() == Some(6)
    }

    /// Kills the process at once (SIGKILL), as a crash would, and waits for it to exit.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Kills the process and starts a new one with the same flags.
    pub async fn restart(&mut self, namespace: &str) {
        self.kill().await;
        let n = self
            .log
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit('-').next())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        *self = Self::spawn(
            namespace,
            self.args.clone(),
            n,
            self.webhook_port,
            self.metrics_port,
            self.kubeconfig.clone(),
            self.failpoints.clone(),
        );
        self.wait_webhook(namespace).await;
    }

    /// `GET path` on its metrics listener: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, Vec<u8>) {
        use http_body_util::{BodyExt, Empty};
        use hyper_util::{client::legacy::Client, rt::TokioExecutor};
        let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let uri: hyper::Uri = format!("http://127.0.0.1:{}{path}", self.metrics_port)
            .parse()
            .expect("a URI");
        let resp = client.get(uri).await.expect("the operator answers over HTTP");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("a whole body").to_bytes();
        (status, body.to_vec())
    }

    /// Process id, for reading its memory use from /proc.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The audit trail on the operator's stdout, once `done` holds for it: complete
    /// lines only (the operator writes them from its own thread), each one JSON
    /// object (a line that is not panics: threat 28's forged line would be one).
    pub async fn audit_lines(
        &self,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> (String, Vec<serde_json::Value>) {
        super::wait::poll(what, || async {
            let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let lines: Vec<serde_json::Value> = complete
                .lines()
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l:?}"))
                })
                .collect();
            if done(&lines) {
                Ok((complete.to_string(), lines))
            } else {
                Err(format!("{} audit lines so far", lines.len()))
            }
        })
        .await
    }

    /// The operator's log so far, for assertions on what it reported.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `mandate run` serving its webhook and metrics on loopback ports, with admission
/// configurations of its own (`mandate-<name>`).
fn loopback_args(name: &str, webhook_port: u16, metrics_port: u16) -> Vec<String> {
    vec![
        "run".to_string(),
        format!("--webhook-listen=127.0.0.1:{webhook_port}"),
        format!("--webhook-url=https://127.0.0.1:{webhook_port}"),
        format!("--webhook-configuration-name=mandate-{name}"),
        format!("--metrics-listen=127.0.0.1:{metrics_port}"),
        format!("--decision-listen=127.0.0.1:{}", free_port()),
    ]
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
