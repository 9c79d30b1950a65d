//! Mandate behind a real Envoy (ext_authz over gRPC and over HTTP): a client with an
//! agent's certificate calls an upstream through Envoy; Mandate decides every call;
//! Envoy's access log carries Mandate's decision id.

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::{
    authorize::{Setup, agent_pair, tools},
    support::{
        envoy::Envoy,
        kubelet::{self, Outcome},
        tls::{Pair, Reply, Signer, https},
    },
};

/// An MCP `tools/call` of `tool` with `arguments`, as a 2026-07-28 client sends it.
fn tools_call(tool: &str, arguments: Value) -> (Vec<(String, String)>, Vec<u8>) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": tool, "arguments": arguments,
                                 "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("accept".to_string(), "application/json, text/event-stream".to_string()),
        ("mcp-protocol-version".to_string(), "2026-07-28".to_string()),
        ("mcp-method".to_string(), "tools/call".to_string()),
        ("mcp-name".to_string(), tool.to_string()),
        ("host".to_string(), "mcp.example".to_string()),
    ];
    (headers, serde_json::to_vec(&body).unwrap())
}

struct Through<'a> {
    envoy: &'a Envoy,
}

impl Through<'_> {
    /// One MCP call through the listener `port` as `client`.
    async fn mcp(
        &self,
        port: u16,
        client: Option<&Pair>,
        tool: &str,
        arguments: Value,
        extra: &[(&str, &str)],
    ) -> Reply {
        let (mut headers, body) = tools_call(tool, arguments);
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        https(port, &self.envoy.roots, client, "POST", "/mcp", &refs, body).await
    }

    /// A plain HTTP call routed as tool `github` (the route's context extensions).
    async fn github(&self, client: Option<&Pair>, host: &str, extra: &[(&str, &str)]) -> Reply {
        let mut headers = vec![("host", host)];
        headers.extend_from_slice(extra);
        https(
            self.envoy.grpc_port,
            &self.envoy.roots,
            client,
            "GET",
            "/github/repos/acme/widgets",
            &headers,
            vec![],
        )
        .await
    }
}

/// The reason Mandate gave for a denial Envoy passed on.
fn denied(r: &Reply) -> String {
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    r.header("x-mandate-reason").unwrap_or("<none>").to_string()
}

fn allowed(r: &Reply) -> Value {
    assert_eq!(
        r.status,
        200,
        "denied: {:?} {}",
        r.header("x-mandate-reason"),
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

#[tokio::test]
async fn envoy_allows_in_scope_calls_over_grpc_and_http_and_a_tasks_timeline_matches_its_access_log() {
    let s = Setup::new("envoy-allow", &[]).await;
    let envoy = Envoy::start(&s.f.ns.name, &s.ca, &s.gateway, s.f.op.decision_port).await;
    let t = Through { envoy: &envoy };
    let g = s.f.grants.get("g").await.unwrap();
    for (port, protocol) in [(envoy.grpc_port, "grpc"), (envoy.http_port, "http")] {
        let rid = format!("req-{protocol}-1");
        let r = t
            .mcp(
                port,
                Some(&s.agent),
                "query",
                json!({"query": "select 1"}),
                &[("x-request-id", &rid)],
            )
            .await;
        // The upstream saw the decision, the grant and the serial Mandate named.
        let seen = allowed(&r);
        let decision = seen["x-mandate-decision-id"]
            .as_str()
            .expect("the upstream got the decision id")
            .to_string();
        assert_eq!(seen["x-mandate-grant"], format!("{}/g", s.f.ns.name));
        assert_eq!(seen["x-mandate-serial"], s.serial.as_str());
        // Envoy's access log line of that call carries the same decision id.
        let line = envoy.access_line(&rid).await;
        let key = if protocol == "grpc" {
            "decision_id"
        } else {
            "decision_header"
        };
        assert_eq!(line[key], decision.as_str(), "{line}");
        assert_eq!(line["code"], 200);
        if protocol == "grpc" {
            assert_eq!(line["serial"], s.serial.as_str());
            assert_eq!(line["grant_uid"], json!(g.metadata.uid));
        }
        // And the audit trail has that decision with the call and the request id.
        let r = s.gateway_get(&format!("/v1/audit?decisionId={decision}")).await;
        let events = r.json()["events"].as_array().unwrap().clone();
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(e["kind"], "DecisionAllowed");
        assert_eq!(e["call"]["tool"], "query");
        assert_eq!(e["call"]["action"], "call");
        assert_eq!(e["call"]["destination"], "mcp.example/mcp");
        assert_eq!(e["call"]["requestId"], rid.as_str());
        assert_eq!(e["serial"], s.serial.as_str());
        assert_eq!(e["grant"]["uid"], json!(g.metadata.uid));
    }
    // A route that names its tool (context extensions) for a plain HTTP call.
    let r = t.github(Some(&s.agent), "api.github.com", &[]).await;
    allowed(&r);

    // The task's whole timeline: issued, the decision Envoy's access log names, the
    // gateway's report of that call, the denial once the task ended, the revocation.
    let rid = "req-timeline";
    let seen = allowed(
        &t.mcp(
            envoy.grpc_port,
            Some(&s.agent),
            "query",
            json!({"query": "select 2"}),
            &[("x-request-id", rid)],
        )
        .await,
    );
    let decision = seen["x-mandate-decision-id"].as_str().unwrap().to_string();
    assert_eq!(envoy.access_line(rid).await["decision_id"], decision.as_str());
    let report = json!({"kind": "ToolCall", "decisionId": decision, "tool": "query", "action": "call",
                        "destination": "mcp.example/mcp", "requestId": rid, "message": "1 row"});
    let r = s.report(&report).await;
    assert_eq!(r.status, 202);
    kubelet::finish_job_pod(&s.f.pods, "work", Outcome::Succeeded).await;
    s.f.wait_revoked_in_crl(&s.serial).await;
    let r = t
        .mcp(
            envoy.grpc_port,
            Some(&s.agent),
            "query",
            json!({"query": "select 3"}),
            &[("x-request-id", "req-late")],
        )
        .await;
    assert_eq!(denied(&r), "TaskFinished");
    let task_uid = {
        let rec = s.f.grants.get("g").await.unwrap();
        let _ = rec;
        let r = s.gateway_get(&format!("/v1/audit?decisionId={decision}")).await;
        r.json()["events"][0]["task"]["uid"].as_str().unwrap().to_string()
    };
    let r = s.gateway_get(&format!("/v1/audit?task={task_uid}")).await;
    let events = r.json()["events"].as_array().unwrap().clone();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let at = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).unwrap_or_else(|| panic!("{kinds:?}"));
    let issued = at(&|e| e["kind"] == "CertificateIssued");
    let decided = at(&|e| e["kind"] == "DecisionAllowed" && e["decisionId"] == decision.as_str());
    let reported = at(&|e| e["kind"] == "ToolCall");
    let denial = at(&|e| e["kind"] == "DecisionDenied" && e["call"]["requestId"] == "req-late");
    let revoked = at(&|e| e["kind"] == "CertificateRevoked");
    assert!(issued < decided && decided < reported && reported < denial, "{kinds:?}");
    assert!(issued < revoked, "{kinds:?}");
    for e in [
        &events[issued],
        &events[decided],
        &events[reported],
        &events[denial],
        &events[revoked],
    ] {
        assert_eq!(e["identity"], format!("{}/agent", s.f.ns.name), "{e}");
        assert_eq!(e["grant"]["namespace"], s.f.ns.name.as_str());
        assert_eq!(e["grant"]["name"], "g");
        assert_eq!(e["grant"]["uid"], json!(g.metadata.uid));
        assert_eq!(e["grant"]["generation"], json!(g.metadata.generation));
        assert_eq!(
            e["task"],
            json!({"kind": "Job", "name": "work", "uid": task_uid}),
            "{e}"
        );
        assert_eq!(e["serial"], s.serial.as_str(), "{e}");
    }
    assert_eq!(events[issued]["reason"], "Initial");
    assert_eq!(events[decided]["reason"], "Allowed");
    assert_eq!(events[decided]["call"]["tool"], "query");
    assert_eq!(events[decided]["call"]["requestId"], rid);
    assert_eq!(events[reported]["decisionId"], decision.as_str());
    assert_eq!(events[reported]["message"], "1 row");
    assert_eq!(events[reported]["call"]["requestId"], rid);
    assert_eq!(events[denial]["reason"], "TaskFinished");
    assert_eq!(events[revoked]["reason"], "TaskCompleted");
    assert!(events[revoked].get("decisionId").is_none());
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn envoy_denies_out_of_scope_forged_and_anonymous_calls_each_with_its_reason() {
    let s = Setup::new("envoy-deny", &[]).await;
    let envoy = Envoy::start(&s.f.ns.name, &s.ca, &s.gateway, s.f.op.decision_port).await;
    let t = Through { envoy: &envoy };
    let (grpc, http) = (envoy.grpc_port, envoy.http_port);
    let now = OffsetDateTime::now_utc();
    let spiffe = format!("spiffe://e2e.example/ns/{}/agent/agent", s.f.ns.name);
    let expired = s.ca.client(
        &spiffe,
        now - time::Duration::hours(2),
        now - time::Duration::hours(1),
        Some(&s.agent.cert),
    );
    let stranger = Signer::other().client(
        &spiffe,
        now - time::Duration::hours(1),
        now + time::Duration::hours(1),
        Some(&s.agent.cert),
    );
    let agent_cert_urlencoded: String =
        percent_encoding::utf8_percent_encode(&s.agent.cert, percent_encoding::NON_ALPHANUMERIC).to_string();
    let xfcc = format!("By=spiffe://e2e.example/gateway;Cert=\"{agent_cert_urlencoded}\";URI={spiffe}");

    for port in [grpc, http] {
        // A tool the grant does not name (an MCP tools/call parsed by Envoy or the body).
        assert_eq!(
            denied(&t.mcp(port, Some(&s.agent), "delete_everything", json!({}), &[]).await),
            "ToolNotGranted"
        );
        // A Cedar forbid on the call's arguments.
        let r = t
            .mcp(
                port,
                Some(&s.agent),
                "query",
                json!({"query": "DROP TABLE orders"}),
                &[],
            )
            .await;
        assert_eq!(denied(&r), "PolicyForbidden");
        let body: Value = r.json();
        assert_eq!(
            body["policies"],
            json!([format!("{}-invoke-base/no-drop", s.f.ns.name)])
        );
        // Data more sensitive than the grant allows.
        let r = t
            .mcp(
                port,
                Some(&s.agent),
                "query",
                json!({"query": "select 1"}),
                &[("x-mandate-data-sensitivity", "restricted")],
            )
            .await;
        assert_eq!(denied(&r), "SensitivityExceeded");
        // Expired, and from another CA: both pass Envoy's handshake, Mandate says why.
        assert_eq!(
            denied(&t.mcp(port, Some(&expired), "query", json!({}), &[]).await),
            "CertificateExpired"
        );
        assert_eq!(
            denied(&t.mcp(port, Some(&stranger), "query", json!({}), &[]).await),
            "UntrustedIssuer"
        );
        // No client certificate.
        assert_eq!(
            denied(&t.mcp(port, None, "query", json!({}), &[]).await),
            "NoCertificate"
        );
        // No certificate, but identity headers claiming the agent's (its certificate is
        // public): an untrusted hop's headers are never an identity.
        let spoof = [
            ("x-forwarded-client-cert", xfcc.as_str()),
            ("x-spiffe-id", spiffe.as_str()),
            ("x-mandate-peer-certificate", agent_cert_urlencoded.as_str()),
        ];
        assert_eq!(
            denied(&t.mcp(port, None, "query", json!({}), &spoof).await),
            "NoCertificate"
        );
    }
    // A destination outside the grant, on a route naming its tool.
    assert_eq!(
        denied(&t.github(Some(&s.agent), "api.github.com.evil.example", &[]).await),
        "DestinationNotGranted"
    );
    // The decision API itself, called by no one in particular: nothing to learn.
    let r = s.anonymous("POST", "/v1/ext-authz/mcp").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"reason": "Unauthenticated"}));
    s.f.ns.cleanup().await;
}

#[tokio::test]
async fn envoy_denies_a_revoked_serial_a_changed_grant_a_completed_task_and_a_suspended_identity() {
    let s = Setup::new("envoy-life", &[]).await;
    // A second identity and task, to suspend.
    let mut other = crate::identity::identity("other");
    other.spec.tools = serde_json::from_value(tools()).unwrap();
    s.f.ids.create(&PostParams::default(), &other).await.unwrap();
    s.f.job("work2", None).await;
    kubelet::wait_for_job_pod(&s.f.pods, "work2").await;
    s.f.grant("g2", "other", ("batch/v1", "Job", "work2"), tools(), None)
        .await;
    s.f.issued_serial("g2").await;
    let other_pair = agent_pair(&s.f, "g2").await;

    let envoy = Envoy::start(&s.f.ns.name, &s.ca, &s.gateway, s.f.op.decision_port).await;
    let t = Through { envoy: &envoy };
    let call = |client: Pair| {
        let t = &t;
        let port = envoy.grpc_port;
        async move {
            t.mcp(port, Some(&client), "query", json!({"query": "select 1"}), &[])
                .await
        }
    };
    allowed(&call(s.agent.clone()).await);

    // Revoked serial: the Secret is lost, its certificate revoked and replaced.
    s.f.secrets.delete("g", &DeleteParams::default()).await.unwrap();
    s.f.wait_revoked_in_crl(&s.serial).await;
    assert_eq!(denied(&call(s.agent.clone()).await), "Revoked");
    let second = wait_new_cert(&s, "g", &s.serial).await;
    allowed(&call(second.clone()).await);

    // The grant changed since the certificate was issued.
    s.f.grants
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"purpose": "another purpose"}})),
        )
        .await
        .unwrap();
    wait_denied(&call, second.clone(), "GrantChanged").await;
    let second_serial = serial_of(&second);
    let third = wait_new_cert(&s, "g", &second_serial).await;
    allowed(&call(third.clone()).await);

    // The task completed.
    kubelet::finish_job_pod(&s.f.pods, "work", Outcome::Succeeded).await;
    wait_denied(&call, third, "TaskFinished").await;

    // The identity is suspended.
    allowed(&call(other_pair.clone()).await);
    s.f.ids
        .patch(
            "other",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspended": true}})),
        )
        .await
        .unwrap();
    wait_denied(&call, other_pair, "IdentitySuspended").await;
    s.f.ns.cleanup().await;
}

fn serial_of(p: &Pair) -> String {
    let der = ::pem::parse(&p.cert).unwrap().into_contents();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    mandate::pki::hex_lower(c.raw_serial())
}

/// Waits until the grant's Secret holds a certificate other than `old`.
async fn wait_new_cert(s: &Setup, grant: &str, old: &str) -> Pair {
    crate::support::wait::poll(&format!("a new certificate for {grant}"), || async {
        let secret = s.f.secrets.get(grant).await.map_err(|e| e.to_string())?;
        if !secret.data.as_ref().is_some_and(|d| d.contains_key("tls.crt")) {
            return Err("no certificate in the Secret".to_string());
        }
        let p = agent_pair(&s.f, grant).await;
        if serial_of(&p) != old {
            Ok(p)
        } else {
            Err(format!("still {old}"))
        }
    })
    .await
}

/// Calls until Envoy passes on a denial with `reason` (decisions follow watch events).
async fn wait_denied<F, Fut>(call: &F, client: Pair, reason: &str)
where
    F: Fn(Pair) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    crate::support::wait::poll(&format!("a denial with {reason}"), || async {
        let r = call(client.clone()).await;
        if r.status == 403 && r.header("x-mandate-reason") == Some(reason) {
            Ok(())
        } else {
            Err(format!("{} {:?}", r.status, r.header("x-mandate-reason")))
        }
    })
    .await
}
