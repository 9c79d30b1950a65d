//! Compile one AgentPolicy's Cedar text: parse, name, check annotations, validate.
//!
//! Policy text is user input, so nothing here panics on it: every problem becomes a
//! [`PolicyError`] with a 1-based line and column in `spec.policies`, which the
//! controller puts in the AgentPolicy's status.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::ffi::DetailedError;
use cedar_policy::{Policy, PolicyId, PolicySet, ValidationMode};

use crate::api::{PolicyError, PolicySummary};

/// The annotation naming a policy.
const ID_ANNOTATION: &str = "id";
/// The annotation turning a `forbid` into an approval requirement.
const APPROVAL_ANNOTATION: &str = "approval";
/// The only value `@approval` may take.
const APPROVAL_REQUIRED: &str = "required";

/// Whether a policy permits or forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// `permit(...)`
    Permit,
    /// `forbid(...)`
    Forbid,
}

impl Effect {
    /// `permit` or `forbid`, as written in Cedar and shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Permit => "permit",
            Effect::Forbid => "forbid",
        }
    }
}

/// One parsed policy of an AgentPolicy.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    /// The policy's id within its AgentPolicy: its `@id` annotation or `policy<N>`.
    pub id: String,
    /// `<AgentPolicy name>/<id>`: the id decisions, Events and metrics use.
    pub qualified_id: String,
    /// Permit or forbid.
    pub effect: Effect,
    /// A `forbid` annotated `@approval("required")`: an approval lifts it.
    pub requires_approval: bool,
    /// 1-based line where the policy starts in `spec.policies`.
    pub line: u32,
    /// The policy, re-identified as `qualified_id` so ids from different
    /// AgentPolicies never collide in one Cedar policy set.
    pub(crate) policy: Policy,
}

/// The result of compiling one AgentPolicy's text.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// The AgentPolicy's name (cluster-scoped, so unique).
    pub name: String,
    /// The policies, in source order. Present even when there are errors, so status
    /// can list them; an AgentPolicy with errors never takes part in a decision.
    pub policies: Vec<CompiledPolicy>,
    /// Parse, annotation and validation errors, in source order.
    pub errors: Vec<PolicyError>,
}

impl Compiled {
    /// True when the text parsed and every policy validated against the schema.
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }

    /// Each policy's id and effect for `status.policies`.
    pub fn summaries(&self) -> Vec<PolicySummary> {
        self.policies
            .iter()
            .map(|p| PolicySummary {
                id: p.id.clone(),
                effect: p.effect.as_str().to_string(),
                requires_approval: p.requires_approval,
            })
            .collect()
    }
}

/// Parse `source` (an AgentPolicy's `spec.policies`), name each policy, check the
/// Mandate annotations and validate everything against the schema in strict mode.
/// `policy_name` is the AgentPolicy's name, used to qualify policy ids.
pub fn compile(source: &str, policy_name: &str) -> Compiled {
    let mut out = Compiled {
        name: policy_name.to_string(),
        ..Compiled::default()
    };

    let pset = match PolicySet::from_str(source) {
        Ok(pset) => pset,
        Err(errors) => {
            // Nothing parsed; each syntax error carries its own span.
            out.errors = errors
                .iter()
                .map(|e| located(source, None, &DetailedError::from(e), None))
                .collect();
            return out;
        }
    };

    // Cedar names policies (and templates) `policy0`, `policy1`, ... in source order.
    // Walk them in that order to find each one's text in the source, for locations.
    let mut parsed: Vec<(usize, Parsed<'_>)> = pset
        .policies()
        .map(|p| (position(p.id()), Parsed::Policy(p)))
        .chain(
            pset.templates()
                .map(|t| (position(t.id()), Parsed::Template(t.id(), t.to_cedar()))),
        )
        .collect();
    parsed.sort_by_key(|(n, _)| *n);

    let mut cursor = 0;
    let mut names: HashMap<String, usize> = HashMap::new();
    // Cedar's generated id -> (our id, start offset), to attribute validation errors.
    let mut by_cedar_id: HashMap<String, (String, usize)> = HashMap::new();
    for (n, item) in parsed {
        let text = match &item {
            Parsed::Policy(p) => p.to_cedar(),
            Parsed::Template(_, text) => Some(text.clone()),
        };
        let start = locate(source, text.as_deref(), &mut cursor);
        match item {
            Parsed::Template(cedar_id, _) => {
                by_cedar_id.insert(cedar_id.to_string(), (format!("policy{n}"), start));
                out.errors.push(at(
                    source,
                    None,
                    start,
                    "policies with slots (?principal, ?resource) are templates, which Mandate does not support; \
                     name the principal or resource instead",
                ));
            }
            Parsed::Policy(policy) => {
                let id = match policy.annotation(ID_ANNOTATION) {
                    Some(id) if id.trim().is_empty() => {
                        out.errors.push(at(source, None, start, "@id must not be empty"));
                        format!("policy{n}")
                    }
                    Some(id) => id.to_string(),
                    None => format!("policy{n}"),
                };
                if let Some(first) = names.get(&id) {
                    let (line, _) = line_column(source, *first);
                    let msg = format!("duplicate policy id \"{id}\": the policy at line {line} already uses it");
                    out.errors.push(at(source, Some(&id), start, &msg));
                } else {
                    names.insert(id.clone(), start);
                }
                by_cedar_id.insert(policy.id().to_string(), (id.clone(), start));

                let effect = match policy.effect() {
                    cedar_policy::Effect::Permit => Effect::Permit,
                    cedar_policy::Effect::Forbid => Effect::Forbid,
                };
                let requires_approval = match (policy.annotation(APPROVAL_ANNOTATION), effect) {
                    (None, _) => false,
                    (Some(APPROVAL_REQUIRED), Effect::Forbid) => true,
                    (Some(_), Effect::Permit) => {
                        let msg = "@approval only applies to forbid policies: an approval lifts a forbid";
                        out.errors.push(at(source, Some(&id), start, msg));
                        false
                    }
                    (Some(other), Effect::Forbid) => {
                        let msg = format!("@approval must be \"{APPROVAL_REQUIRED}\", not \"{other}\"");
                        out.errors.push(at(source, Some(&id), start, &msg));
                        false
                    }
                };
                let qualified_id = format!("{policy_name}/{id}");
                out.policies.push(CompiledPolicy {
                    line: line_column(source, start).0,
                    policy: policy.new_id(PolicyId::new(&qualified_id)),
                    id,
                    qualified_id,
                    effect,
                    requires_approval,
                });
            }
        }
    }

    match crate::policy::validator() {
        Ok(validator) => {
            let result = validator.validate(&pset, ValidationMode::Strict);
            for error in result.validation_errors() {
                let cedar_id: &str = error.policy_id().as_ref();
                let (id, start) = match by_cedar_id.get(cedar_id) {
                    Some((id, start)) => (Some(id.as_str()), Some(*start)),
                    None => (None, None),
                };
                let detail = DetailedError::from(error);
                let mut e = located(source, id, &detail, start);
                e.message = strip_cedar_policy_prefix(&e.message, cedar_id);
                out.errors.push(e);
            }
        }
        Err(schema_error) => out.errors.push(PolicyError {
            policy_id: None,
            line: None,
            column: None,
            message: schema_error.to_string(),
        }),
    }

    // Source order reads best in status; errors without a location go last.
    out.errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
    out
}

enum Parsed<'a> {
    Policy(&'a Policy),
    Template(&'a PolicyId, String),
}

/// The `N` of a Cedar-generated `policyN` id; anything else sorts last.
fn position(id: &PolicyId) -> usize {
    let id: &str = id.as_ref();
    id.strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Byte offset of `text` in `source`, searching from `cursor` (policies come in source
/// order, and Cedar keeps each policy's exact source text). Falls back to `cursor`.
fn locate(source: &str, text: Option<&str>, cursor: &mut usize) -> usize {
    let rest = source.get(*cursor..).unwrap_or("");
    match text.and_then(|t| rest.find(t).map(|i| (i, t.len()))) {
        Some((i, len)) => {
            let start = *cursor + i;
            *cursor = start + len;
            start
        }
        None => *cursor,
    }
}

/// Cedar's validator says "for policy `policy3`, ..." with its generated id; the
/// error already names the policy by its real id, so drop that phrase. A context
/// attribute missing for one action is nearly always a policy that forgot to say
/// which action it is about: say so.
fn strip_cedar_policy_prefix(message: &str, cedar_id: &str) -> String {
    let mut message = message.replace(&format!("for policy `{cedar_id}`, "), "");
    if message.contains("in context for Mandate::Action::") && message.contains("not found") {
        message.push_str(
            " (each action has its own context: scope the policy to one action, for example \
             `action == Mandate::Action::\"issue\"`)",
        );
    }
    message
}

/// A [`PolicyError`] at the first labelled span of `detail`, or at `fallback`.
fn located(source: &str, policy_id: Option<&str>, detail: &DetailedError, fallback: Option<usize>) -> PolicyError {
    let offset = detail.source_locations.first().map(|l| l.loc.start).or(fallback);
    let mut message = detail.message.clone();
    if let Some(help) = &detail.help {
        message.push_str(" (");
        message.push_str(help);
        message.push(')');
    }
    let (line, column) = match offset {
        Some(o) => {
            let (l, c) = line_column(source, o);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    PolicyError {
        policy_id: policy_id.map(str::to_string),
        line,
        column,
        message,
    }
}

fn at(source: &str, policy_id: Option<&str>, offset: usize, message: &str) -> PolicyError {
    let (line, column) = line_column(source, offset);
    PolicyError {
        policy_id: policy_id.map(str::to_string),
        line: Some(line),
        column: Some(column),
        message: message.to_string(),
    }
}

/// 1-based line and column (in characters, as editors count) of a byte offset.
/// Offsets past the end or inside a character are clamped rather than trusted.
pub(crate) fn line_column(source: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_named_by_id_annotation_or_position() {
        let src = r#"
@id("payments-stripe")
permit(principal, action == Mandate::Action::"issue", resource == Mandate::Tool::"stripe");

forbid(principal, action == Mandate::Action::"issue", resource) when { context.ttlSeconds > 3600 };
"#;
        let c = compile(src, "base");
        assert!(c.is_valid(), "{:?}", c.errors);
        let ids: Vec<_> = c
            .policies
            .iter()
            .map(|p| (p.id.as_str(), p.qualified_id.as_str(), p.effect))
            .collect();
        assert_eq!(
            ids,
            [
                ("payments-stripe", "base/payments-stripe", Effect::Permit),
                ("policy1", "base/policy1", Effect::Forbid)
            ]
        );
        assert_eq!(c.policies[0].policy.id().to_string(), "base/payments-stripe");
        assert_eq!(c.policies[0].line, 2);
        assert_eq!(c.policies[1].line, 5);
    }

    #[test]
    fn a_syntax_error_is_reported_at_its_line_and_column() {
        let src = "permit(principal, action, resource);\n\npermit(principal, action resource);\n";
        let c = compile(src, "broken");
        assert!(!c.is_valid());
        assert!(c.policies.is_empty());
        let e = &c.errors[0];
        assert_eq!((e.line, e.column), (Some(3), Some(26)), "{e:?}");
        assert!(e.message.contains("unexpected token"), "{}", e.message);
    }

    #[test]
    fn an_unknown_attribute_is_reported_at_its_line_and_column_with_the_policy_id() {
        let src = "@id(\"ok\")\npermit(principal, action, resource);\n@id(\"typo\")\npermit(principal, action, resource)\n  when { principal.ownr == \"team-a\" };\n";
        let c = compile(src, "typos");
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        let e = &c.errors[0];
        assert_eq!(e.policy_id.as_deref(), Some("typo"));
        // The span starts at `principal.ownr`, column 10 of line 5.
        assert_eq!((e.line, e.column), (Some(5), Some(10)), "{e:?}");
        assert!(e.message.contains("ownr"), "{}", e.message);
        assert!(
            !e.message.contains("policy1"),
            "cedar's generated id leaks: {}",
            e.message
        );
        // Policies are still listed so status can show them.
        assert_eq!(c.summaries().len(), 2);
    }

    #[test]
    fn a_type_error_in_context_is_a_validation_error() {
        let src = "permit(principal, action == Mandate::Action::\"issue\", resource)\nwhen { context.ttlSeconds == \"900\" };";
        let c = compile(src, "types");
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert_eq!((c.errors[0].line, c.errors[0].column), (Some(2), Some(8)));
        assert!(!c.errors[0].message.contains("policy0"), "{}", c.errors[0].message);
    }

    #[test]
    fn reading_one_actions_context_without_naming_the_action_says_how_to_fix_it() {
        let c = compile(
            "permit(principal, action, resource) when { context.ttlSeconds > 60 };",
            "t",
        );
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(c.errors[0].message.contains("invoke"), "{}", c.errors[0].message);
        assert!(
            c.errors[0].message.contains("scope the policy to one action"),
            "{}",
            c.errors[0].message
        );
    }

    #[test]
    fn unknown_entity_types_and_actions_are_validation_errors() {
        let c = compile(
            "permit(principal == Mandate::User::\"x\", action == Mandate::Action::\"read\", resource);",
            "t",
        );
        assert!(c.errors.len() >= 2, "{:?}", c.errors);
    }

    #[test]
    fn duplicate_ids_are_an_error_at_the_second_policy() {
        let src =
            "@id(\"a\")\npermit(principal, action, resource);\n@id(\"a\")\nforbid(principal, action, resource);\n";
        let c = compile(src, "dup");
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert_eq!((c.errors[0].line, c.errors[0].column), (Some(3), Some(1)));
        assert!(c.errors[0].message.contains("line 1"), "{}", c.errors[0].message);
    }

    #[test]
    fn an_explicit_id_colliding_with_a_positional_one_is_a_duplicate() {
        let src = "permit(principal, action, resource);\n@id(\"policy0\")\nforbid(principal, action, resource);\n";
        assert_eq!(compile(src, "dup").errors.len(), 1);
    }

    #[test]
    fn approval_annotation_marks_a_forbid_and_is_rejected_elsewhere() {
        let ok = compile("@approval(\"required\")\nforbid(principal, action, resource);", "a");
        assert!(ok.is_valid(), "{:?}", ok.errors);
        assert!(ok.policies[0].requires_approval);
        assert!(ok.summaries()[0].requires_approval);

        let on_permit = compile("@approval(\"required\")\npermit(principal, action, resource);", "a");
        assert_eq!(on_permit.errors.len(), 1);
        assert!(on_permit.errors[0].message.contains("only applies to forbid"));

        let other_value = compile("@approval(\"maybe\")\nforbid(principal, action, resource);", "a");
        assert_eq!(other_value.errors.len(), 1);
        assert!(other_value.errors[0].message.contains("\"maybe\""));

        let no_value = compile("@approval\nforbid(principal, action, resource);", "a");
        assert_eq!(no_value.errors.len(), 1);
    }

    #[test]
    fn templates_are_rejected() {
        let c = compile("permit(principal == ?principal, action, resource);", "tpl");
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(c.errors[0].message.contains("template"));
    }

    #[test]
    fn empty_text_compiles_to_no_policies() {
        let c = compile("// nothing yet\n", "empty");
        assert!(c.is_valid());
        assert!(c.policies.is_empty());
    }

    #[test]
    fn line_column_counts_characters_and_clamps() {
        let s = "ab\ncé d";
        assert_eq!(line_column(s, 0), (1, 1));
        assert_eq!(line_column(s, 3), (2, 1));
        assert_eq!(line_column(s, 6), (2, 3)); // after "cé" (é is two bytes)
        assert_eq!(line_column(s, 5), (2, 2)); // inside é: clamped back
        assert_eq!(line_column(s, 999), (2, 5));
    }
}
