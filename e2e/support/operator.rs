//! The operator process under test: the real `mandate` binary, started per test and
//! scoped to the test's namespace, so a test can kill it mid-way and start it again.

use std::{path::PathBuf, process::Stdio};

use tokio::process::{Child, Command};

/// A running `mandate run`; killed when dropped.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
    args: Vec<String>,
}

impl Operator {
    /// Starts `mandate run` watching only `namespace`, with any extra flags.
    pub async fn start(namespace: &str, extra: &[&str]) -> Operator {
        let mut args = vec!["run".to_string(), format!("--watch-namespace={namespace}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(namespace, args, 0)
    }

    fn spawn(namespace: &str, args: Vec<String>, n: u32) -> Operator {
        let dir = super::repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{namespace}-operator-{n}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_mandate"))
            .args(&args)
            .env("KUBECONFIG", super::kubeconfig_path())
            .env(
                "RUST_LOG",
                std::env::var("E2E_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .env("MANDATE_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("mandate binary starts");
        Operator { child, log, args }
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
        *self = Self::spawn(namespace, self.args.clone(), n);
    }

    /// Process id, for reading its memory use from /proc.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The operator's log so far, for assertions on what it reported.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
