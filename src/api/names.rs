//! The resource contract: every name Mandate puts on objects it does not own the schema
//! of (finalizers, labels, annotations, ConfigMap names, field managers). Controllers,
//! the admission webhook and the tools all read these; none of them defines its own.

/// Finalizer that holds a grant until its revocation is recorded.
pub const FINALIZER: &str = "mandate.dev/revocation";
/// Finalizer that holds a CertificateRecord until its certificate has expired, so no
/// serial leaves the revocation record (and the CRL built from it) early.
pub const RECORD_FINALIZER: &str = "mandate.dev/until-expiry";
/// Label on a grant's Secret and on its CertificateRecords: the grant's name.
pub const LABEL_GRANT: &str = "mandate.dev/grant";
/// Label on a grant's Secret: the identity's name.
pub const LABEL_IDENTITY: &str = "mandate.dev/identity";
/// Label on a grant's Secret: the task's name.
pub const LABEL_TASK: &str = "mandate.dev/task";
/// Label on a CertificateRecord: the grant's UID (a name can be reused, a UID cannot).
pub const LABEL_GRANT_UID: &str = "mandate.dev/grant-uid";
/// Label on a CertificateRecord: the namespace of its grant.
pub const LABEL_GRANT_NAMESPACE: &str = "mandate.dev/grant-namespace";
/// Annotation on a grant's Secret: when the certificate in it is due for renewal.
pub const ANN_RENEW_AT: &str = "mandate.dev/renew-at";
/// Annotation on a grant's Secret: the serial of the certificate in it.
pub const ANN_SERIAL: &str = "mandate.dev/serial";
/// `app.kubernetes.io/managed-by` value on everything Mandate creates.
pub const MANAGED_BY: &str = "mandate";
/// Field manager of every server-side apply the operator makes, suffixed per call site.
pub const MANAGER: &str = "mandate";
/// Name of the ConfigMap holding the CRL, in the CA's namespace.
pub const CRL_CONFIGMAP: &str = "mandate-crl";
/// Key of the signed CRL (PEM) in [`CRL_CONFIGMAP`].
pub const CRL_KEY: &str = "crl.pem";
/// Key of the CRL number in [`CRL_CONFIGMAP`].
pub const CRL_NUMBER_KEY: &str = "crlNumber";
/// Name of the ConfigMap holding the trust bundle, in every namespace with an identity.
pub const TRUST_BUNDLE_CONFIGMAP: &str = "mandate-trust-bundle";
/// Label on the CRL ConfigMap and on each of its parts: the CRL ConfigMap's name. The
/// served CRL is assembled from the objects with this label alone.
pub const LABEL_CRL: &str = "mandate.dev/crl";
/// Key, in a CRL split over several ConfigMaps, of the number of parts.
pub const CRL_PARTS_KEY: &str = "parts";
/// Key, in a CRL split over several ConfigMaps, of the SHA-256 (hex) of the whole DER.
pub const CRL_SHA256_KEY: &str = "sha256";
/// Key of one part's DER bytes (`binaryData`) in a CRL part ConfigMap.
pub const CRL_PART_KEY: &str = "crl.der.part";
