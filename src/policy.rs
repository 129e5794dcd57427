//! `s3vol policy`: the least-privilege IAM policy a volume needs, and the trust
//! policy that lets a named principal assume the role only with an external ID.
//!
//! The identity policy grants exactly the requests s3vol sends: ListObjectsV2 on the
//! bucket, limited by an `s3:prefix` condition to the volume's prefix (HeadBucket is
//! never used, so the bucket itself needs nothing else), and object actions on
//! `BUCKET/PREFIX/*` only.

use serde_json::{Value, json};

use crate::names::Source;
use crate::store::{bucket_arn, object_arn};

/// Actions on objects a read-only volume needs (HeadObject is authorised by
/// s3:GetObject).
const READ_ACTIONS: &[&str] = &["s3:GetObject"];

/// Actions on objects a read-write volume adds: uploads (single and multipart; the
/// multipart calls are authorised by s3:PutObject), deletes, and aborting uploads
/// that failed.
const WRITE_ACTIONS: &[&str] = &["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"];

/// A statement allowing a bucket-level listing `action`, limited to the volume's
/// prefix by an `s3:prefix` condition unless the volume is the whole bucket.
fn bucket_statement(source: &Source, sid: &str, action: &str) -> Value {
    let mut statement = json!({
        "Sid": sid,
        "Effect": "Allow",
        "Action": action,
        "Resource": bucket_arn(&source.bucket),
    });
    if !source.prefix.is_root() {
        let prefix = source.prefix.as_str();
        statement["Condition"] =
            json!({ "StringLike": { "s3:prefix": [prefix, format!("{prefix}*")] } });
    }
    statement
}

/// The identity policy for a volume on `source`.
pub fn identity_policy(source: &Source, read_write: bool) -> Value {
    let prefix = source.prefix.as_str();
    let mut list = json!({
        "Sid": "ListTheVolume",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": bucket_arn(&source.bucket),
    });
    if !source.prefix.is_root() {
        list["Condition"] =
            json!({ "StringLike": { "s3:prefix": [prefix, format!("{prefix}*")] } });
    }
    let objects = object_arn(&source.bucket, &format!("{prefix}*"));
    let mut statements = vec![
        list,
        json!({
            "Sid": "ReadTheVolume",
            "Effect": "Allow",
            "Action": READ_ACTIONS,
            "Resource": objects,
        }),
    ];
    if read_write {
        statements.push(json!({
            "Sid": "WriteTheVolume",
            "Effect": "Allow",
            "Action": WRITE_ACTIONS,
            "Resource": objects,
        }));
        statements.push(bucket_statement(
            source,
            "FindStaleUploads",
            "s3:ListBucketMultipartUploads",
        ));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "{0:?} is not an IAM principal ARN; give the ARN of the role or user that will run s3vol, \
         e.g. arn:aws:iam::111122223333:role/platform"
    )]
    BadPrincipal(String),
    #[error(
        "the external ID must be 2 to 1224 characters of letters, digits and +=,.@:/-_ (AWS's rule)"
    )]
    BadExternalId,
}

/// Checks a principal ARN: `arn:PARTITION:iam::ACCOUNT:(root|role/..|user/..)`.
pub fn check_principal(arn: &str) -> Result<(), PolicyError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && (parts[5] == "root" || parts[5].starts_with("role/") || parts[5].starts_with("user/"));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadPrincipal(arn.to_string()))
    }
}

/// Checks an external ID against AWS's rule for sts:AssumeRole.
pub fn check_external_id(id: &str) -> Result<(), PolicyError> {
    let ok = (2..=1224).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@:/-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadExternalId)
    }
}

/// The role's trust policy: `principal` may assume it, only when it presents
/// `external_id`.
pub fn trust_policy(principal: &str, external_id: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "AWS": principal },
            "Action": "sts:AssumeRole",
            "Condition": { "StringEquals": { "sts:ExternalId": external_id } },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions(policy: &Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for statement in policy["Statement"].as_array().unwrap() {
            let resource = statement["Resource"].as_str().unwrap().to_string();
            match &statement["Action"] {
                Value::String(a) => out.push((a.clone(), resource.clone())),
                Value::Array(list) => {
                    for a in list {
                        out.push((a.as_str().unwrap().to_string(), resource.clone()));
                    }
                }
                other => panic!("unexpected action {other}"),
            }
        }
        out
    }

    #[test]
    fn read_only_policy_is_scoped_to_the_prefix() {
        let source: Source = "bkt/data/2024".parse().unwrap();
        let policy = identity_policy(&source, false);
        assert_eq!(
            actions(&policy),
            [
                ("s3:ListBucket".to_string(), "arn:aws:s3:::bkt".to_string()),
                (
                    "s3:GetObject".to_string(),
                    "arn:aws:s3:::bkt/data/2024/*".to_string()
                ),
            ]
        );
        assert_eq!(
            policy["Statement"][0]["Condition"]["StringLike"]["s3:prefix"],
            json!(["data/2024/", "data/2024/*"])
        );
        assert!(!policy.to_string().contains("PutObject"));
    }

    #[test]
    fn read_write_policy_adds_uploads_and_deletes_only() {
        let source: Source = "bkt/root".parse().unwrap();
        let policy = identity_policy(&source, true);
        let granted = actions(&policy);
        for action in WRITE_ACTIONS {
            assert!(
                granted.contains(&(action.to_string(), "arn:aws:s3:::bkt/root/*".to_string())),
                "{action}"
            );
        }
        assert!(granted.contains(&(
            "s3:ListBucketMultipartUploads".to_string(),
            "arn:aws:s3:::bkt".to_string()
        )));
        assert!(!policy.to_string().contains("s3:*"));
    }

    #[test]
    fn whole_bucket_policy_has_no_prefix_condition() {
        let source: Source = "bkt".parse().unwrap();
        let policy = identity_policy(&source, false);
        assert!(policy["Statement"][0].get("Condition").is_none());
        assert_eq!(policy["Statement"][1]["Resource"], "arn:aws:s3:::bkt/*");
    }

    #[test]
    fn principals_and_external_ids_are_checked() {
        for good in [
            "arn:aws:iam::111122223333:root",
            "arn:aws:iam::111122223333:role/platform",
            "arn:aws-cn:iam::111122223333:user/ops/alice",
        ] {
            assert_eq!(check_principal(good), Ok(()), "{good}");
        }
        for bad in [
            "111122223333",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::1234:role/x",
            "arn:aws:iam::111122223333:group/x",
        ] {
            assert!(check_principal(bad).is_err(), "{bad}");
        }
        assert_eq!(check_external_id("ext-123_a.b@c"), Ok(()));
        assert!(check_external_id("x").is_err());
        assert!(check_external_id("has space").is_err());
        assert!(check_external_id(&"a".repeat(1225)).is_err());
    }

    #[test]
    fn trust_policy_requires_the_external_id() {
        let policy = trust_policy("arn:aws:iam::111122223333:role/platform", "ext-123");
        let statement = &policy["Statement"][0];
        assert_eq!(
            statement["Principal"]["AWS"],
            "arn:aws:iam::111122223333:role/platform"
        );
        assert_eq!(statement["Action"], "sts:AssumeRole");
        assert_eq!(
            statement["Condition"]["StringEquals"]["sts:ExternalId"],
            "ext-123"
        );
    }
}
