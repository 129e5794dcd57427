//! Where a published volume's credentials come from: the node-publish
//! Secret (static keys, a role and its external ID) or the pod's own
//! service-account token, checked field by field.

use std::collections::HashMap;

use crate::auth::{Secret, StaticKeys};

/// Where the credentials come from: `secret` (the default) or `pod`.
pub const AUTHENTICATION_SOURCE: &str = "authentication_source";
/// The audience of the pod's service-account token for `pod` authentication.
pub const TOKEN_AUDIENCE: &str = "token_audience";
/// The role a volume is reached through: in the Secret, or in volume_context
/// for a pod's own identity.
pub const ROLE_ARN: &str = "role_arn";
/// The audience kubelet asks tokens for unless the volume names another.
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
/// Where kubelet puts the pods' tokens in volume_context.
pub(super) const TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";

/// A refused request: the gRPC status to answer with.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

/// Where a volume's credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// The driver's own (its service account, the node's instance profile),
    /// or static keys from the Secret; then the role, if one is named.
    Secret {
        keys: Option<StaticKeys>,
        role: Option<Role>,
    },
    /// The pod's service-account token, exchanged for the role's credentials
    /// (AssumeRoleWithWebIdentity) and re-read at every renewal.
    Pod { role_arn: String, token: Secret },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub arn: String,
    pub external_id: Option<Secret>,
}

/// The credentials `context` (volume_context) and `secrets` (the Secret
/// `which`: node-publish or provisioner) give.
pub(super) fn parse(
    context: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
    which: &str,
) -> Result<Credentials, Invalid> {
    const KNOWN: &[&str] = &[
        ROLE_ARN,
        "external_id",
        "access_key_id",
        "secret_access_key",
        "session_token",
    ];
    if let Some(unknown) = secrets.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(Invalid(format!(
            "the {which} Secret has a key {unknown:?} s3vol does not use; its keys are {}",
            KNOWN.join(", ")
        )));
    }
    let secret = |key: &str| secrets.get(key).filter(|v| !v.is_empty());
    let from_pod = context.get(AUTHENTICATION_SOURCE).map(String::as_str) == Some("pod");
    if context.contains_key(ROLE_ARN) && !from_pod {
        return Err(Invalid(format!(
            "volume_context {ROLE_ARN} is for authentication_source pod, whose token the \
             role's trust policy checks; with credentials from the Secret, put {ROLE_ARN} in \
             the node-publish Secret, so that whoever writes PersistentVolumes cannot pick \
             the role"
        )));
    }
    let role_arn = match (context.get(ROLE_ARN), secret(ROLE_ARN)) {
        (Some(a), Some(b)) if a != b => {
            return Err(Invalid(format!(
                "volume_context {ROLE_ARN} and the Secret's {ROLE_ARN} name different roles; \
                 give it in one place"
            )));
        }
        (Some(arn), _) | (None, Some(arn)) => Some(arn.clone()),
        (None, None) => None,
    };
    if let Some(arn) = &role_arn {
        crate::values::parse_role_arn(arn)
            .map_err(|e| Invalid(format!("{ROLE_ARN} {arn:?}: {e}")))?;
    }
    let external_id = secret("external_id")
        .map(|id| {
            crate::values::parse_external_id(id)
                .map_err(|e| Invalid(format!("the Secret's external_id: {e}")))
        })
        .transpose()?;
    match context.get(AUTHENTICATION_SOURCE).map(String::as_str) {
        None | Some("secret") => {
            let keys = match (secret("access_key_id"), secret("secret_access_key")) {
                (Some(id), Some(key)) => Some(StaticKeys {
                    access_key_id: id.clone(),
                    secret_access_key: Secret::new(key.clone()),
                    session_token: secret("session_token").map(|t| Secret::new(t.clone())),
                }),
                (None, None) if secret("session_token").is_some() => {
                    return Err(Invalid(
                        "the Secret has a session_token but no access_key_id and \
                         secret_access_key; give them with it"
                            .into(),
                    ));
                }
                (None, None) => None,
                _ => {
                    return Err(Invalid(
                        "the Secret has only one of access_key_id and secret_access_key; \
                         give both or neither"
                            .into(),
                    ));
                }
            };
            if external_id.is_some() && role_arn.is_none() {
                return Err(Invalid(format!(
                    "the Secret has an external_id but no {ROLE_ARN}: name the role it is for"
                )));
            }
            let role = role_arn.map(|arn| Role { arn, external_id });
            Ok(Credentials::Secret { keys, role })
        }
        Some("pod") => {
            let Some(role_arn) = role_arn else {
                return Err(Invalid(format!(
                    "authentication_source pod needs {ROLE_ARN} (in volume_context or the \
                     Secret): the role the pod's token is exchanged for"
                )));
            };
            if external_id.is_some() || secret("access_key_id").is_some() {
                return Err(Invalid(
                    "authentication_source pod takes the pod's token, not an external_id or \
                     keys from the Secret; leave them out or use authentication_source secret"
                        .into(),
                ));
            }
            let audience = context
                .get(TOKEN_AUDIENCE)
                .map_or(DEFAULT_AUDIENCE, String::as_str);
            let token = pod_token(context, audience)?;
            Ok(Credentials::Pod { role_arn, token })
        }
        Some(other) => Err(Invalid(format!(
            "volume_context {AUTHENTICATION_SOURCE} {other:?}: use \"secret\" or \"pod\""
        ))),
    }
}

/// The pod's token for `audience`, from what kubelet adds when the CSIDriver
/// asks for tokens: `{"AUDIENCE": {"token": "...", "expirationTimestamp": "..."}}`.
fn pod_token(context: &HashMap<String, String>, audience: &str) -> Result<Secret, Invalid> {
    let Some(tokens) = context.get(TOKENS) else {
        return Err(Invalid(format!(
            "volume_context has no {TOKENS}: the CSIDriver object must list audience \
             {audience:?} under tokenRequests (deploy/kubernetes/csidriver.yaml does)"
        )));
    };
    let parsed: serde_json::Value = serde_json::from_str(tokens)
        .map_err(|e| Invalid(format!("volume_context {TOKENS} is not JSON: {e}")))?;
    let token = parsed
        .get(audience)
        .and_then(|t| t.get("token"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Invalid(format!(
                "volume_context {TOKENS} has no token for audience {audience:?}: add it to \
                 the CSIDriver's tokenRequests, or set {TOKEN_AUDIENCE}"
            ))
        })?;
    // A JSON string may hold an escaped newline that the text around it did not.
    if token.chars().any(char::is_control) {
        return Err(Invalid(format!(
            "volume_context {TOKENS}: the token for audience {audience:?} holds a control \
             character"
        )));
    }
    Ok(Secret::new(token))
}

/// `s3vol-NAMESPACE-POD` when kubelet says which pod (podInfoOnMount), so
/// CloudTrail shows whose mount made a request; else the host's default.
pub(super) fn pod_session_name(context: &HashMap<String, String>) -> String {
    let pod = context.get("csi.storage.k8s.io/pod.name");
    let namespace = context.get("csi.storage.k8s.io/pod.namespace");
    match (namespace, pod) {
        (Some(namespace), Some(pod)) => {
            crate::auth::session_name(&format!("s3vol-{namespace}-{pod}"))
        }
        _ => crate::auth::default_session_name(),
    }
}
