//! One audit trail: every certificate lifecycle event, decision and reported tool call
//! as one JSON object per line, all carrying the same correlation keys (identity,
//! grant UID and generation, task, serial, decision id, trace), so one query returns a
//! task's whole timeline. `docs/audit.md` is the schema.
//!
//! A leaf: it imports nothing of Mandate's and calls nothing. The writers (controllers, the decision service) build [`Event`]s and hand
//! them to an [`AuditLog`], which writes each to its sink and keeps the latest in a
//! bounded buffer for `GET /v1/audit`. A flood is bounded by count and by bytes, and
//! what is dropped is counted, never an out-of-memory.

use std::{
    collections::VecDeque,
    io::Write,
    sync::{Arc, Mutex},
};

use k8s_openapi::jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    CertificateIssued,
    CertificateRenewed,
    CertificateRevoked,
    CertificateExpired,
    GrantDenied,
    GrantApproved,
    DecisionAllowed,
    DecisionDenied,
    /// Reported by a gateway after a call it let through.
    ToolCall,
    /// Reported by a gateway or tool: data read or written.
    DataAccess,
}

/// The grant an event is about: its UID and generation, not only its name (a name can
/// be reused).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
}

/// The task an event is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskKey {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// The correlation keys every event carries (each when known).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Keys {
    /// `namespace/name` of the AgentIdentity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskKey>,
    /// The certificate's serial, lower-case hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
    /// W3C `traceparent`, when the caller sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// One audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub time: Timestamp,
    pub kind: EventKind,
    #[serde(flatten)]
    pub keys: Keys,
    /// Machine-readable reason (`TaskCompleted`, `OutOfScope`, ...), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The call a decision or report is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<CallInfo>,
}

/// What was called: on decisions and on gateways' reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallInfo {
    pub tool: String,
    pub action: String,
    pub destination: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub data_sensitivity: String,
    /// The caller's request id (Envoy's `x-request-id`).
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub request_id: String,
}

/// Which events a query wants: every given key must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    pub identity: Option<String>,
    /// A grant's UID.
    pub grant: Option<String>,
    /// A task's UID.
    pub task: Option<String>,
    pub serial: Option<String>,
    pub decision_id: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        let k = &e.keys;
        let eq = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
        eq(&self.identity, k.identity.as_deref())
            && eq(&self.grant, k.grant.as_ref().map(|g| g.uid.as_str()))
            && eq(&self.task, k.task.as_ref().map(|t| t.uid.as_str()))
            && eq(&self.serial, k.serial.as_deref())
            && eq(&self.decision_id, k.decision_id.as_deref())
    }
}

/// How much the in-memory buffer keeps.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub events: usize,
    /// Their JSON, in all.
    pub bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        // About 16 MiB at most: a day of a busy namespace's lifecycle events, or the
        // last few minutes of a flood of reports.
        Bounds {
            events: 50_000,
            bytes: 16 * 1024 * 1024,
        }
    }
}

/// One buffered event: its JSON line (what it costs in memory is what the byte bound
/// counts) and a hash of each key a query filters on, so a query parses only the
/// lines whose hashes match.
struct Stored {
    line: Box<str>,
    keys: [u64; 5],
}

fn key_hash(value: Option<&str>) -> u64 {
    use std::hash::{Hash, Hasher};
    let Some(v) = value else { return 0 };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    // 0 stands for "no key".
    h.finish() | 1
}

fn key_hashes(
    identity: Option<&str>,
    grant: Option<&str>,
    task: Option<&str>,
    serial: Option<&str>,
    decision: Option<&str>,
) -> [u64; 5] {
    [
        key_hash(identity),
        key_hash(grant),
        key_hash(task),
        key_hash(serial),
        key_hash(decision),
    ]
}

impl Keys {
    fn hashes(&self) -> [u64; 5] {
        key_hashes(
            self.identity.as_deref(),
            self.grant.as_ref().map(|g| g.uid.as_str()),
            self.task.as_ref().map(|t| t.uid.as_str()),
            self.serial.as_deref(),
            self.decision_id.as_deref(),
        )
    }
}

impl Filter {
    fn hashes(&self) -> [u64; 5] {
        key_hashes(
            self.identity.as_deref(),
            self.grant.as_deref(),
            self.task.as_deref(),
            self.serial.as_deref(),
            self.decision_id.as_deref(),
        )
    }
}

struct Ring {
    events: VecDeque<Stored>,
    bytes: usize,
}

/// Writes each event to its sink (one JSON line) and keeps the latest, bounded.
///
/// The write is synchronous: once `emit` returns the line is the kernel's (a pipe or
/// file), so a crash right after it (threat 31's crash points) loses no evidence. A
/// writer thread batching lines was tried; it took about a write system call off each
/// decision but lost the queued lines at a crash.
#[derive(Clone)]
pub struct AuditLog {
    ring: Arc<Mutex<Ring>>,
    bounds: Bounds,
    sink: Arc<Mutex<Box<dyn Write + Send>>>,
    dropped: Counter,
}

impl AuditLog {
    /// A log writing to stdout: log shippers (Fluent Bit, Vector, Promtail) read a
    /// container's stdout as JSON lines with no custom parser.
    pub fn stdout(bounds: Bounds) -> AuditLog {
        AuditLog::with_sink(bounds, Box::new(std::io::stdout()))
    }

    pub fn with_sink(bounds: Bounds, sink: Box<dyn Write + Send>) -> AuditLog {
        AuditLog {
            ring: Arc::new(Mutex::new(Ring {
                events: VecDeque::new(),
                bytes: 0,
            })),
            bounds,
            sink: Arc::new(Mutex::new(sink)),
            dropped: Counter::default(),
        }
    }

    /// Records one event. serde_json escapes every control character, so user text in
    /// it cannot forge a line.
    pub fn emit(&self, event: Event) {
        let Ok(mut line) = serde_json::to_vec(&event) else {
            self.dropped.inc();
            return;
        };
        let size = line.len();
        let keys = event.keys.hashes();
        let stored = Stored {
            // serde_json writes UTF-8.
            line: String::from_utf8_lossy(&line).into(),
            keys,
        };
        line.push(b'\n');
        {
            let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
            if sink.write_all(&line).and_then(|()| sink.flush()).is_err() {
                self.dropped.inc();
            }
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.events.push_back(stored);
        ring.bytes += size;
        while ring.events.len() > self.bounds.events || ring.bytes > self.bounds.bytes {
            let Some(gone) = ring.events.pop_front() else {
                break;
            };
            ring.bytes -= gone.line.len();
            self.dropped.inc();
        }
    }

    /// The buffered events `filter` picks, oldest first, at most `limit`.
    pub fn query(&self, filter: &Filter, limit: usize) -> Vec<Event> {
        let want = filter.hashes();
        let candidate = |s: &Stored| want.iter().zip(s.keys).all(|(w, k)| *w == 0 || *w == k);
        // Copied out under the lock, parsed after it: a large query must not hold up
        // every writer (decisions among them) while it parses. The hashes are 64-bit,
        // so a candidate that the exact check then drops (a collision) is not a concern
        // for the limit.
        let lines: Vec<Box<str>> = {
            let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            ring.events
                .iter()
                .rev()
                .filter(|s| candidate(s))
                .take(limit)
                .map(|s| s.line.clone())
                .collect()
        };
        let mut out: Vec<Event> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Event>(l).ok())
            .filter(|e| filter.matches(e))
            .collect();
        out.reverse();
        out
    }

    /// Events dropped from the buffer (or not written), since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// The same count, for the metrics registry.
    pub fn dropped_counter(&self) -> Counter {
        self.dropped.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(i: i64, kind: EventKind, task: &str, serial: &str) -> Event {
        Event {
            call: None,
            time: Timestamp::from_second(1_800_000_000 + i).unwrap(),
            kind,
            keys: Keys {
                identity: Some("ns/triage".into()),
                grant: Some(GrantKey {
                    namespace: "ns".into(),
                    name: "g".into(),
                    uid: "g-uid".into(),
                    generation: 1,
                }),
                task: Some(TaskKey {
                    kind: "Job".into(),
                    name: "work".into(),
                    uid: task.into(),
                }),
                serial: Some(serial.into()),
                decision_id: None,
                traceparent: None,
            },
            reason: None,
            message: Some("line one\nline two".into()),
        }
    }

    #[test]
    fn each_event_is_one_json_line_with_the_correlation_keys_at_the_top() {
        let out = Shared::default();
        let log = AuditLog::with_sink(Bounds::default(), Box::new(out.clone()));
        log.emit(event(0, EventKind::CertificateIssued, "t-uid", "aa"));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.lines().count(),
            1,
            "a newline in user text must not split the event: {text}"
        );
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["kind"], "CertificateIssued");
        assert_eq!(v["serial"], "aa");
        assert_eq!(v["grant"]["uid"], "g-uid");
        assert_eq!(v["task"]["uid"], "t-uid");
        assert!(v.get("decisionId").is_none(), "unknown keys are left out, not null");
    }

    #[test]
    fn a_task_timeline_comes_back_in_order_and_only_that_task() {
        let log = AuditLog::with_sink(Bounds::default(), Box::new(std::io::sink()));
        log.emit(event(0, EventKind::CertificateIssued, "t1", "aa"));
        log.emit(event(1, EventKind::CertificateIssued, "t2", "bb"));
        log.emit(event(2, EventKind::DecisionAllowed, "t1", "aa"));
        log.emit(event(3, EventKind::CertificateRevoked, "t1", "aa"));
        let timeline = log.query(
            &Filter {
                task: Some("t1".into()),
                ..Default::default()
            },
            100,
        );
        let kinds: Vec<EventKind> = timeline.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::CertificateIssued,
                EventKind::DecisionAllowed,
                EventKind::CertificateRevoked
            ]
        );
        let by_serial = log.query(
            &Filter {
                serial: Some("bb".into()),
                ..Default::default()
            },
            100,
        );
        assert_eq!(by_serial.len(), 1);
    }

    #[test]
    fn a_flood_is_bounded_by_count_and_bytes_and_counted() {
        let log = AuditLog::with_sink(
            Bounds {
                events: 100,
                bytes: 1_000_000,
            },
            Box::new(std::io::sink()),
        );
        for i in 0..1000 {
            log.emit(event(i, EventKind::ToolCall, "t", "aa"));
        }
        let kept = log.query(&Filter::default(), usize::MAX);
        assert_eq!(kept.len(), 100);
        assert_eq!(
            kept[0].time,
            Timestamp::from_second(1_800_000_900).unwrap(),
            "the oldest go first"
        );
        assert_eq!(log.dropped(), 900);

        let small = AuditLog::with_sink(
            Bounds {
                events: 1000,
                bytes: 2_000,
            },
            Box::new(std::io::sink()),
        );
        for i in 0..100 {
            small.emit(event(i, EventKind::ToolCall, "t", "aa"));
        }
        let line = serde_json::to_vec(&event(0, EventKind::ToolCall, "t", "aa"))
            .unwrap()
            .len();
        assert!(small.query(&Filter::default(), usize::MAX).len() * line <= 2_000 + line);
    }
}
