use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// One tool, the actions allowed on it and the destinations it may reach.
///
/// Names are compared exactly, byte for byte: there are no wildcards and no case
/// folding, so a grant can never be wider than what it spells out. The schema only
/// admits lower-case ASCII names, which rules out look-alike Unicode, padding and
/// path tricks before the operator sees them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolScope {
    /// Tool name, for example `github` or `postgres`. Lower-case letters, digits, `.`, `_`
    /// and `-`; starts and ends with a letter or digit; at most 63 characters.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$')").message("tool names are lower-case letters, digits, '.', '_' or '-', start and end with a letter or digit, and are at most 63 characters"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// Actions allowed on the tool, for example `read`, `write`, `create-issue`. Same
    /// character rules as tool names. At least one, at most 32, no repeats.
    #[schemars(
        length(min = 1, max = 32),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub actions: Vec<String>,

    /// Destinations the tool may reach: host names, `host:port`, or URL-style
    /// prefixes such as `api.github.com/repos/acme`. Lower-case; no wildcards, no
    /// `..`, no query or fragment. Empty means the tool needs no network destination.
    /// At most 32, no repeats, each at most 253 characters.
    #[serde(default)]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([a-z0-9.:/_-]*[a-z0-9/])?$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(d, !d.contains('..') && !d.contains('//'))").message("destinations must not contain '..' or '//'"))]
    pub destinations: Vec<String>,

    /// Classification of the data this tool reaches: `public`, `internal`,
    /// `confidential` or `restricted`. Set it in an identity's ceiling; policies see it
    /// as the tool's `sensitivity`. In a grant it may only raise the ceiling's value,
    /// never lower it. Absent means `internal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Sensitivity>,
}

/// How sensitive the data behind a tool or a task is, from least to most. Policies
/// compare levels through the numeric `sensitivityLevel` (0 to 3) Mandate derives.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    /// Published or publishable data.
    Public,
    /// Internal data: the default when nothing is said.
    #[default]
    Internal,
    /// Confidential data: customer or business data with limited access.
    Confidential,
    /// Restricted data: secrets, regulated or personal data.
    Restricted,
}

impl Sensitivity {
    /// The level as a number policies can compare: public 0 .. restricted 3.
    pub fn level(self) -> i64 {
        self as i64
    }

    /// The lower-case name used in manifests and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Sensitivity::Public => "public",
            Sensitivity::Internal => "internal",
            Sensitivity::Confidential => "confidential",
            Sensitivity::Restricted => "restricted",
        }
    }
}
