//! What a policy sees: the request facts, and their Cedar entities and context.
//!
//! The controller fills an [`IssueRequest`] from the ToolGrant, its AgentIdentity,
//! the requester recorded by the admission webhook and any ToolGrantApproval; this
//! module turns it into the entities and context Mandate's schema declares
//! (`mandate.cedarschema`), one tool at a time.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use cedar_policy::{Context, Entities, EntityId, EntityTypeName, EntityUid, Request};
use cedar_policy_core::ast::{self, Literal, PartialValue, Value};
use smol_str::SmolStr;

use crate::api::{Sensitivity, ToolScope, UserInfo};

/// Everything Mandate knows about a grant when deciding whether to issue it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IssueRequest {
    /// The grant's namespace.
    pub namespace: String,
    /// The grant's name.
    pub grant_name: String,
    /// The grant generation being decided (recorded, not shown to policy).
    pub generation: i64,
    /// The AgentIdentity the grant is for.
    pub agent: AgentFacts,
    /// Who created the grant (the grant's `spec.requester`).
    pub requester: UserInfo,
    /// The tools asked for; each is decided separately and all must be allowed.
    pub tools: Vec<ToolRequest>,
    /// The requested certificate lifetime in seconds.
    pub ttl_seconds: i64,
    /// The grant's `dataSensitivity` (`internal` when absent).
    pub data_sensitivity: Sensitivity,
    /// The grant's `purpose`.
    pub purpose: String,
    /// The task's kind, for example `Job`.
    pub task_kind: String,
    /// The task's name.
    pub task_name: String,
    /// An approval of this generation, when one exists.
    pub approval: Option<ApprovalFacts>,
}

/// The AgentIdentity a grant is for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentFacts {
    /// The AgentIdentity's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its accountable owner (`spec.owner`).
    pub owner: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The ServiceAccount its Pods run as.
    pub service_account: String,
}

impl AgentFacts {
    /// The Cedar entity id of the agent: `<namespace>/<name>`.
    pub fn entity_id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One tool of a grant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolRequest {
    /// Tool name.
    pub name: String,
    /// Actions asked for on it.
    pub actions: Vec<String>,
    /// Destinations asked for.
    pub destinations: Vec<String>,
    /// The tool's effective classification (see [`ToolRequest::from_scopes`]).
    pub sensitivity: Sensitivity,
}

impl ToolRequest {
    /// The tool as the grant asks for it, classified by the higher of the identity
    /// ceiling's `sensitivity` and the grant's: a grant may raise the classification,
    /// never lower it. Absent in the ceiling means `internal`; absent in the grant
    /// means the ceiling's value.
    pub fn from_scopes(granted: &ToolScope, ceiling: Option<&ToolScope>) -> Self {
        let floor = ceiling.and_then(|c| c.sensitivity).unwrap_or_default();
        ToolRequest {
            name: granted.name.clone(),
            actions: granted.actions.clone(),
            destinations: granted.destinations.clone(),
            sensitivity: granted.sensitivity.map_or(floor, |s| s.max(floor)),
        }
    }
}

/// A ToolGrantApproval of the generation being decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApprovalFacts {
    /// The ToolGrantApproval's name.
    pub name: String,
    /// Who approved (its recorded `approver.username`).
    pub approver: String,
}

/// The `context.approval` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalContext {
    /// An approval is present.
    pub approved: bool,
    /// Its approver; empty when there is none.
    pub approver: String,
    /// The approver is the requester.
    pub self_approval: bool,
}

impl ApprovalContext {
    /// The approval as it is: present or not, self-approval or not.
    pub fn of(req: &IssueRequest) -> Self {
        match &req.approval {
            Some(a) => ApprovalContext {
                approved: true,
                approver: a.approver.clone(),
                self_approval: a.approver == req.requester.username,
            },
            None => ApprovalContext {
                approved: false,
                approver: String::new(),
                self_approval: false,
            },
        }
    }

    /// An approval by someone other than the requester: used to ask "would an
    /// approval lift this denial?".
    pub fn hypothetical() -> Self {
        ApprovalContext {
            approved: true,
            approver: crate::policy::HYPOTHETICAL_APPROVER.to_string(),
            self_approval: false,
        }
    }
}

/// Building the Cedar input failed. Only malformed values can cause it (Cedar
/// rejects nothing Mandate's API admits), and the engine then denies: fail closed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The entity set was inconsistent (an entity listed twice).
    #[error("failed to build the Cedar entity set: {0}")]
    Entities(#[source] Box<cedar_policy::entities_errors::EntitiesError>),
}

/// Cedar's view of a request: the principal and the entities, shared by every tool
/// of the grant. [`IssueInput::request`] makes the Cedar request for one tool.
///
/// Entities and context are built from ready values with `cedar-policy-core`'s AST
/// types rather than from `RestrictedExpression`s: the public constructors evaluate
/// every attribute expression and recompute the transitive closure of the entity
/// graph, which cost more than evaluating the policies of a typical decision
/// (docs/benchmarks.md). The graph here is one level deep (agent to namespace,
/// requester to groups), so the closure is the parent sets themselves. The
/// `input_conforms_to_the_schema` test holds both to Mandate's schema.
#[derive(Clone, Debug)]
pub struct IssueInput {
    /// `Mandate::Agent::"<namespace>/<name>"`.
    pub principal: EntityUid,
    /// `Mandate::Action::"issue"`.
    pub action: EntityUid,
    /// The agent (child of its namespace), the requester (child of their groups)
    /// and every tool.
    pub entities: Entities,
    /// The context attributes every tool of the grant shares.
    shared: BTreeMap<SmolStr, Value>,
}

/// Entity type names and the action, parsed once. They are constants; the
/// `entity_types_parse` test proves it, so the `expect`s cannot fire.
pub(crate) struct Names {
    pub namespace: EntityTypeName,
    pub group: EntityTypeName,
    pub agent: EntityTypeName,
    pub requester: EntityTypeName,
    pub tool: EntityTypeName,
    pub call: EntityTypeName,
    pub issue: EntityUid,
    pub invoke: EntityUid,
}

fn type_name(name: &str) -> EntityTypeName {
    #[allow(clippy::expect_used)]
    EntityTypeName::from_str(name).expect("constant entity type name parses")
}

pub(crate) static NAMES: LazyLock<Names> = LazyLock::new(|| Names {
    namespace: type_name("Mandate::Namespace"),
    group: type_name("Mandate::Group"),
    agent: type_name("Mandate::Agent"),
    requester: type_name("Mandate::Requester"),
    tool: type_name("Mandate::Tool"),
    call: type_name("Mandate::Call"),
    issue: EntityUid::from_type_name_and_id(type_name("Mandate::Action"), EntityId::new("issue")),
    invoke: EntityUid::from_type_name_and_id(type_name("Mandate::Action"), EntityId::new("invoke")),
});

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

fn string(s: &str) -> Value {
    Value::from(s)
}

fn strings(items: &[String]) -> Value {
    Value::set_of_lits(items.iter().map(|s| Literal::from(s.as_str())), None)
}

/// An entity whose attributes are already values, and whose parents are all its
/// ancestors.
fn entity(uid: &EntityUid, attrs: Vec<(&str, Value)>, parents: impl IntoIterator<Item = EntityUid>) -> ast::Entity {
    ast::Entity::new_with_attr_partial_value(
        uid.clone().into(),
        attrs
            .into_iter()
            .map(|(k, v)| (SmolStr::new(k), PartialValue::Value(v))),
        HashSet::new(),
        parents.into_iter().map(Into::into).collect(),
        [],
    )
}

impl IssueInput {
    /// The principal, action and entities for deciding `req`.
    pub fn new(req: &IssueRequest) -> Result<Self, InputError> {
        let n = &*NAMES;
        let agent = &req.agent;
        let namespace = uid(&n.namespace, &agent.namespace);
        let principal = uid(&n.agent, &agent.entity_id());
        let requester = requester_uid(req);

        let groups: BTreeSet<&str> = req.requester.groups.iter().map(String::as_str).collect();
        let group_uids: Vec<EntityUid> = groups.iter().map(|g| uid(&n.group, g)).collect();

        // The namespace and the groups are not entities of their own: they have no
        // attributes, and Cedar answers `principal in Mandate::Namespace::"x"` from
        // the ancestors recorded on the principal, never from the ancestor itself.
        let mut entities = Vec::with_capacity(2 + req.tools.len());
        entities.push(agent_entity(&principal, agent, namespace));
        entities.push(entity(
            &requester,
            vec![
                ("username", string(&req.requester.username)),
                ("uid", string(&req.requester.uid)),
            ],
            group_uids,
        ));
        // A grant names each tool once (the CRD enforces it); a repeat here with a
        // different classification is rejected by Cedar as a conflicting entity, and
        // the decision denies.
        for tool in &req.tools {
            entities.push(entity(
                &uid(&n.tool, &tool.name),
                vec![
                    ("name", string(&tool.name)),
                    ("sensitivity", string(tool.sensitivity.as_str())),
                    ("sensitivityLevel", Value::from(tool.sensitivity.level())),
                ],
                [],
            ));
        }
        // No schema here: the schema checks cost more than the decision, and the
        // `input_conforms_to_the_schema` test holds this code to it instead.
        let entities = cedar_policy_core::entities::Entities::from_entities(
            entities,
            None::<&cedar_policy_core::entities::NoEntitiesSchema>,
            cedar_policy_core::entities::TCComputation::AssumeAlreadyComputed,
            cedar_policy_core::extensions::Extensions::all_available(),
        )
        .map_err(|e| InputError::Entities(Box::new(e)))?;

        let shared = BTreeMap::from([
            (SmolStr::new_static("namespace"), string(&req.namespace)),
            (SmolStr::new_static("grant"), string(&req.grant_name)),
            (SmolStr::new_static("purpose"), string(&req.purpose)),
            (SmolStr::new_static("ttlSeconds"), Value::from(req.ttl_seconds)),
            (
                SmolStr::new_static("dataSensitivity"),
                string(req.data_sensitivity.as_str()),
            ),
            (
                SmolStr::new_static("dataSensitivityLevel"),
                Value::from(req.data_sensitivity.level()),
            ),
            (SmolStr::new_static("taskKind"), string(&req.task_kind)),
            (SmolStr::new_static("taskName"), string(&req.task_name)),
            (
                SmolStr::new_static("requester"),
                Value::from(ast::EntityUID::from(requester)),
            ),
        ]);
        Ok(IssueInput {
            principal,
            action: n.issue.clone(),
            entities: Entities::from(entities),
            shared,
        })
    }

    /// `Mandate::Tool::"<tool>"`.
    pub fn resource(tool: &ToolRequest) -> EntityUid {
        uid(&NAMES.tool, &tool.name)
    }

    /// The `IssueContext` record of the schema for `tool`, with the given approval.
    pub fn context(&self, tool: &ToolRequest, approval: &ApprovalContext) -> Context {
        Context::from(self.ast_context(tool, approval))
    }

    fn ast_context(&self, tool: &ToolRequest, approval: &ApprovalContext) -> ast::Context {
        let mut context = self.shared.clone();
        context.insert(SmolStr::new_static("actions"), strings(&tool.actions));
        context.insert(SmolStr::new_static("destinations"), strings(&tool.destinations));
        context.insert(
            SmolStr::new_static("approval"),
            Value::record(
                [
                    ("approved", Value::from(approval.approved)),
                    ("approver", string(&approval.approver)),
                    ("selfApproval", Value::from(approval.self_approval)),
                ],
                None,
            ),
        );
        ast::Context::Value(Arc::new(context))
    }

    /// The Cedar request for `tool`, with its context and the given approval.
    pub fn request(&self, tool: &ToolRequest, approval: &ApprovalContext) -> Request {
        Request::from(self.ast_request(tool, approval))
    }

    /// [`request`](Self::request) in the form Cedar's evaluator takes.
    pub(crate) fn ast_request(&self, tool: &ToolRequest, approval: &ApprovalContext) -> ast::Request {
        let known = |u: &EntityUid| ast::EntityUIDEntry::known(u.clone().into(), None);
        ast::Request::new_unchecked(
            known(&self.principal),
            known(&self.action),
            known(&Self::resource(tool)),
            Some(self.ast_context(tool, approval)),
        )
    }
}

/// The agent as Cedar sees it, a child of its namespace (the same for `issue` and
/// `invoke`).
fn agent_entity(principal: &EntityUid, agent: &AgentFacts, namespace: EntityUid) -> ast::Entity {
    entity(
        principal,
        vec![
            ("name", string(&agent.name)),
            ("namespace", string(&agent.namespace)),
            ("owner", string(&agent.owner)),
            ("spiffeId", string(&agent.spiffe_id)),
            ("serviceAccount", string(&agent.service_account)),
        ],
        [namespace],
    )
}

fn requester_uid(req: &IssueRequest) -> EntityUid {
    uid(&NAMES.requester, &req.requester.username)
}

#[cfg(test)]
pub(crate) mod tests {
    use cedar_policy::EvalResult;

    use super::*;

    /// A realistic request: a payments agent asking for Stripe writes.
    pub(crate) fn request() -> IssueRequest {
        IssueRequest {
            namespace: "team-payments".into(),
            grant_name: "refund-run-42".into(),
            generation: 3,
            agent: AgentFacts {
                name: "refunder".into(),
                namespace: "team-payments".into(),
                owner: "team-payments".into(),
                spiffe_id: "spiffe://mandate.local/ns/team-payments/agent/refunder".into(),
                service_account: "refunder".into(),
            },
            requester: UserInfo {
                username: "alice@example.com".into(),
                uid: "u-1".into(),
                groups: vec![
                    "payments-oncall".into(),
                    "system:authenticated".into(),
                    "payments-oncall".into(),
                ],
            },
            tools: vec![ToolRequest {
                name: "stripe".into(),
                actions: vec!["read".into(), "refund".into()],
                destinations: vec!["api.stripe.com".into()],
                sensitivity: Sensitivity::Confidential,
            }],
            ttl_seconds: 900,
            data_sensitivity: Sensitivity::Confidential,
            purpose: "refund duplicate charges".into(),
            task_kind: "Job".into(),
            task_name: "refund-run-42".into(),
            approval: None,
        }
    }

    fn attr(e: &Entities, u: &EntityUid, name: &str) -> String {
        match e.get(u).and_then(|e| e.attr(name)) {
            Some(Ok(v)) => v.to_string(),
            other => panic!("{u} has no attribute {name}: {other:?}"),
        }
    }

    #[test]
    fn entity_types_parse() {
        assert_eq!(NAMES.issue.to_string(), r#"Mandate::Action::"issue""#);
        assert_eq!(NAMES.tool.to_string(), "Mandate::Tool");
    }

    #[test]
    fn entities_carry_ids_parents_and_attributes() {
        let mut req = request();
        req.tools.push(ToolRequest {
            name: "postgres".into(),
            actions: vec!["read".into()],
            ..Default::default()
        });
        let input = IssueInput::new(&req).unwrap();
        assert_eq!(
            input.principal.to_string(),
            r#"Mandate::Agent::"team-payments/refunder""#
        );
        let stripe = IssueInput::resource(&req.tools[0]);
        assert_eq!(stripe.to_string(), r#"Mandate::Tool::"stripe""#);
        let postgres = IssueInput::resource(&req.tools[1]);
        let e = &input.entities;

        let ns: EntityUid = r#"Mandate::Namespace::"team-payments""#.parse().unwrap();
        assert!(e.is_ancestor_of(&ns, &input.principal));
        assert_eq!(attr(e, &input.principal, "owner"), "\"team-payments\"");
        assert_eq!(attr(e, &input.principal, "namespace"), "\"team-payments\"");
        assert_eq!(attr(e, &input.principal, "serviceAccount"), "\"refunder\"");
        assert!(attr(e, &input.principal, "spiffeId").contains("/agent/refunder"));

        let requester: EntityUid = r#"Mandate::Requester::"alice@example.com""#.parse().unwrap();
        let oncall: EntityUid = r#"Mandate::Group::"payments-oncall""#.parse().unwrap();
        assert!(e.is_ancestor_of(&oncall, &requester));
        assert_eq!(attr(e, &requester, "uid"), "\"u-1\"");

        assert_eq!(attr(e, &stripe, "sensitivity"), "\"confidential\"");
        assert_eq!(attr(e, &stripe, "sensitivityLevel"), "2");
        assert_eq!(attr(e, &postgres, "sensitivity"), "\"internal\"");
        assert_eq!(attr(e, &postgres, "sensitivityLevel"), "1");
        // Agent, requester, two tools; the namespace and groups are only ancestors.
        assert_eq!(e.len(), 4);
    }

    #[test]
    fn context_carries_the_tool_the_task_and_the_approval() {
        let mut req = request();
        req.approval = Some(ApprovalFacts {
            name: "ok-1".into(),
            approver: "alice@example.com".into(),
        });
        let ctx = IssueInput::new(&req)
            .unwrap()
            .context(&req.tools[0], &ApprovalContext::of(&req));
        let get = |k: &str| ctx.get(k).unwrap_or_else(|| panic!("no {k}"));
        assert_eq!(get("namespace"), EvalResult::String("team-payments".into()));
        assert_eq!(get("grant"), EvalResult::String("refund-run-42".into()));
        assert_eq!(get("ttlSeconds"), EvalResult::Long(900));
        assert_eq!(get("dataSensitivityLevel"), EvalResult::Long(2));
        assert_eq!(get("taskKind"), EvalResult::String("Job".into()));
        assert_eq!(get("actions").to_string(), r#"["read", "refund"]"#);
        assert_eq!(get("destinations").to_string(), r#"["api.stripe.com"]"#);
        assert_eq!(
            get("requester").to_string(),
            r#"Mandate::Requester::"alice@example.com""#
        );
        let EvalResult::Record(approval) = get("approval") else {
            panic!("approval is a record")
        };
        assert_eq!(approval.get("approved"), Some(&EvalResult::Bool(true)));
        assert_eq!(approval.get("selfApproval"), Some(&EvalResult::Bool(true)));

        let none = ApprovalContext::of(&request());
        assert_eq!(
            none,
            ApprovalContext {
                approved: false,
                approver: String::new(),
                self_approval: false
            }
        );
        assert!(!ApprovalContext::hypothetical().self_approval);
    }

    #[test]
    fn input_conforms_to_the_schema() {
        // The hot path skips schema checks; this is what keeps it honest.
        let schema = crate::policy::schema().unwrap();
        let req = request();
        let tool = &req.tools[0];
        let input = IssueInput::new(&req).unwrap();
        let context = input.context(tool, &ApprovalContext::of(&req));
        Request::new(
            input.principal.clone(),
            input.action.clone(),
            IssueInput::resource(tool),
            context,
            Some(schema),
        )
        .expect("request fits the schema");
        Entities::from_entities(input.entities.iter().cloned(), Some(schema)).expect("entities fit the schema");
    }

    #[test]
    fn invoke_input_conforms_to_the_schema() {
        let schema = crate::policy::schema().unwrap();
        let req = request();
        let invoke = InvokeRequest {
            namespace: req.namespace.clone(),
            grant_name: req.grant_name.clone(),
            agent: req.agent.clone(),
            tool: req.tools[0].clone(),
            action: "write".into(),
            destination: "api.stripe.com/v1/refunds".into(),
            intent: "refund order 42".into(),
            data_sensitivity: Sensitivity::Confidential,
            task_kind: "Job".into(),
            task_name: "refund-42".into(),
            arguments: serde_json::json!({"order": 42, "note": "late"}).as_object().cloned(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            request_id: "r-1".into(),
        };
        let input = InvokeInput::new(&invoke).unwrap();
        let r = input.request();
        Request::new(
            r.principal().unwrap().clone(),
            r.action().unwrap().clone(),
            r.resource().unwrap().clone(),
            r.context().unwrap().clone(),
            Some(schema),
        )
        .expect("the invoke request fits the schema");
        Entities::from_entities(input.entities().iter().cloned(), Some(schema)).expect("entities fit the schema");
    }

    #[test]
    fn a_tool_named_twice_is_an_input_error() {
        // The CRD refuses it. If it ever got through with two classifications, the
        // engine must deny rather than pick one of them.
        let mut req = request();
        let mut again = req.tools[0].clone();
        again.sensitivity = Sensitivity::Public;
        req.tools.push(again);
        assert!(matches!(IssueInput::new(&req), Err(InputError::Entities(_))));
    }

    #[test]
    fn tool_sensitivity_is_the_higher_of_ceiling_and_grant() {
        let scope = |s: Option<Sensitivity>| ToolScope {
            name: "db".into(),
            actions: vec!["read".into()],
            destinations: vec![],
            sensitivity: s,
        };
        use Sensitivity::*;
        let eff =
            |g, c: Option<Option<Sensitivity>>| ToolRequest::from_scopes(&scope(g), c.map(scope).as_ref()).sensitivity;
        assert_eq!(eff(None, None), Internal);
        assert_eq!(eff(None, Some(Some(Restricted))), Restricted);
        assert_eq!(eff(Some(Public), Some(Some(Confidential))), Confidential);
        assert_eq!(eff(Some(Restricted), Some(Some(Public))), Restricted);
        assert_eq!(eff(None, Some(Some(Public))), Public);
        assert_eq!(eff(Some(Public), Some(None)), Internal);
    }
}

/// One tool call at request time, as policy sees it (action `invoke`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InvokeRequest {
    /// The grant's namespace.
    pub namespace: String,
    pub grant_name: String,
    pub agent: AgentFacts,
    /// The tool called, as granted (actions and destinations of the grant, the
    /// classification as at issuance).
    pub tool: ToolRequest,
    pub action: String,
    pub destination: String,
    /// What the agent says it is doing.
    pub intent: String,
    pub data_sensitivity: Sensitivity,
    pub task_kind: String,
    pub task_name: String,
    /// The call's arguments (a JSON object, or `None` when none were sent).
    pub arguments: Option<serde_json::Map<String, serde_json::Value>>,
    pub traceparent: String,
    pub request_id: String,
}

/// Cedar's view of one call: the request and its entities.
pub struct InvokeInput {
    pub(crate) request: ast::Request,
    pub(crate) entities: Entities,
}

impl InvokeInput {
    pub fn new(req: &InvokeRequest) -> Result<Self, InputError> {
        let n = &*NAMES;
        let agent = &req.agent;
        let principal = uid(&n.agent, &agent.entity_id());
        let resource = uid(&n.tool, &req.tool.name);
        let call = uid(&n.call, "call");
        let tags: Vec<(SmolStr, PartialValue)> = req
            .arguments
            .iter()
            .flatten()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (SmolStr::new(k), PartialValue::Value(string(&text)))
            })
            .collect();
        let entities = vec![
            agent_entity(&principal, agent, uid(&n.namespace, &agent.namespace)),
            entity(
                &resource,
                vec![
                    ("name", string(&req.tool.name)),
                    ("sensitivity", string(req.tool.sensitivity.as_str())),
                    ("sensitivityLevel", Value::from(req.tool.sensitivity.level())),
                ],
                [],
            ),
            ast::Entity::new_with_attr_partial_value(call.clone().into(), [], HashSet::new(), HashSet::new(), tags),
        ];
        let entities = cedar_policy_core::entities::Entities::from_entities(
            entities,
            None::<&cedar_policy_core::entities::NoEntitiesSchema>,
            cedar_policy_core::entities::TCComputation::AssumeAlreadyComputed,
            cedar_policy_core::extensions::Extensions::all_available(),
        )
        .map_err(|e| InputError::Entities(Box::new(e)))?;
        let arguments_json = req
            .arguments
            .as_ref()
            .map(|a| serde_json::Value::Object(a.clone()).to_string())
            .unwrap_or_default();
        let context = BTreeMap::from([
            (SmolStr::new_static("namespace"), string(&req.namespace)),
            (SmolStr::new_static("grant"), string(&req.grant_name)),
            (SmolStr::new_static("taskKind"), string(&req.task_kind)),
            (SmolStr::new_static("taskName"), string(&req.task_name)),
            (SmolStr::new_static("action"), string(&req.action)),
            (SmolStr::new_static("destination"), string(&req.destination)),
            (SmolStr::new_static("intent"), string(&req.intent)),
            (
                SmolStr::new_static("dataSensitivity"),
                string(req.data_sensitivity.as_str()),
            ),
            (
                SmolStr::new_static("dataSensitivityLevel"),
                Value::from(req.data_sensitivity.level()),
            ),
            (
                SmolStr::new_static("arguments"),
                Value::from(ast::EntityUID::from(call)),
            ),
            (SmolStr::new_static("argumentsJson"), string(&arguments_json)),
            (SmolStr::new_static("traceparent"), string(&req.traceparent)),
            (SmolStr::new_static("requestId"), string(&req.request_id)),
        ]);
        let known = |u: &EntityUid| ast::EntityUIDEntry::known(u.clone().into(), None);
        let request = ast::Request::new_unchecked(
            known(&principal),
            known(&n.invoke),
            known(&resource),
            Some(ast::Context::Value(Arc::new(context))),
        );
        Ok(InvokeInput {
            request,
            entities: Entities::from(entities),
        })
    }

    /// The Cedar request, for tests that check it against the schema.
    pub fn request(&self) -> Request {
        Request::from(self.request.clone())
    }

    pub fn entities(&self) -> &Entities {
        &self.entities
    }
}
