//! Cedar policy for grant issuance: compile AgentPolicy text, index it, decide.
//!
//! Everything here is pure: no Kubernetes client, no I/O, no clock. The controller
//! turns API objects into an [`IssueRequest`] and AgentPolicies into a
//! [`PolicyStore`], asks [`PolicyStore::decide_issue`], and writes what it gets back
//! into the grant's status, Events and the audit log. docs/policy.md describes the
//! schema, the decision rules and the policy index for policy authors.

mod compile;
mod engine;
mod index;
mod input;

#[cfg(test)]
mod examples_tests;

use std::sync::LazyLock;

use cedar_policy::{Schema, Validator};

pub use compile::{Compiled, CompiledPolicy, Effect, compile};
pub use engine::{
    AgentPolicyEntry, HYPOTHETICAL_APPROVER, InvokeDecision, InvokeDenial, IssueDecision, NamespaceMatcher, Outcome,
    PolicyStore,
};
pub use input::{
    AgentFacts, ApprovalContext, ApprovalFacts, InputError, InvokeInput, InvokeRequest, IssueInput, IssueRequest,
    ToolRequest,
};

/// Mandate's Cedar schema in the human-readable schema format: the entities, actions
/// and context attributes policy text may use.
pub const SCHEMA_SOURCE: &str = include_str!("mandate.cedarschema");

/// The Cedar namespace of every Mandate entity type and action.
pub const CEDAR_NAMESPACE: &str = "Mandate";

/// The schema and its validator, parsed once. The schema is a constant compiled into
/// the binary, so a failure here is a bug caught by `schema_parses_without_warnings`;
/// it is still reported as an error (every policy then fails to compile, so issuance
/// fails closed) rather than a panic.
static SCHEMA: LazyLock<Result<Validator, String>> = LazyLock::new(|| {
    Schema::from_cedarschema_str(SCHEMA_SOURCE)
        .map(|(schema, _warnings)| Validator::new(schema))
        .map_err(|e| format!("failed to parse Mandate's built-in Cedar schema: {e}"))
});

/// Mandate's Cedar schema.
pub fn schema() -> Result<&'static Schema, &'static str> {
    validator().map(Validator::schema)
}

fn validator() -> Result<&'static Validator, &'static str> {
    SCHEMA.as_ref().map_err(String::as_str)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn schema_parses_without_warnings() {
        let (_, warnings) = Schema::from_cedarschema_str(SCHEMA_SOURCE).expect("schema parses");
        let warnings: Vec<String> = warnings.map(|w| w.to_string()).collect();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(schema().is_ok());
    }

    #[test]
    fn schema_declares_issue_and_invoke_on_agents_and_tools() {
        let schema = schema().unwrap();
        let actions: Vec<String> = schema.actions().map(|a| a.to_string()).collect();
        assert!(
            actions.contains(&r#"Mandate::Action::"issue""#.to_string()),
            "{actions:?}"
        );
        assert!(
            actions.contains(&r#"Mandate::Action::"invoke""#.to_string()),
            "{actions:?}"
        );
        let principals: BTreeSet<String> = schema.principals().map(|p| p.to_string()).collect();
        assert_eq!(principals, BTreeSet::from(["Mandate::Agent".to_string()]));
    }
}
