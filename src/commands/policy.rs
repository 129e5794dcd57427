//! `s3vol policy`: the least-privilege IAM policy a volume needs, and the trust
//! policy that lets a named principal assume the role only with an external ID.
//!
//! The identity policy grants exactly the requests s3vol sends: ListObjectsV2 on the
//! bucket, limited by an `s3:prefix` condition to the volume's prefix (HeadBucket is
//! never used, so the bucket itself needs nothing else), and object actions on
//! `BUCKET/PREFIX/*` only.

use std::process::ExitCode;

use serde_json::{Value, json};

use crate::cse::volume::CseOptions;
use crate::names::{Source, check_external_id, check_principal};
use crate::store::{bucket_arn, object_arn};

/// Actions on objects a read-only volume needs (HeadObject is authorised by
/// s3:GetObject).
const READ_ACTIONS: &[&str] = &["s3:GetObject"];

/// Actions on objects a read-write volume adds: uploads (single and multipart; the
/// multipart calls are authorised by s3:PutObject), deletes, and aborting uploads
/// that failed.
const WRITE_ACTIONS: &[&str] = &["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"];

/// What a view of the past adds (`--version-at`): whether the bucket keeps
/// versions, listing them, and reading them.
const VERSION_ACTIONS: &[&str] = &["s3:GetObjectVersion"];

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

/// The identity policy for a volume on `source`, read-write or not, and a view
/// of the past (`versions`) or not.
pub fn identity_policy(source: &Source, read_write: bool, versions: bool) -> Value {
    let prefix = source.prefix.as_str();
    let list = bucket_statement(source, "ListTheVolume", "s3:ListBucket");
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
    if versions {
        statements.push(bucket_statement(
            source,
            "ListTheVersions",
            "s3:ListBucketVersions",
        ));
        statements.push(json!({
            "Sid": "ReadTheVersions",
            "Effect": "Allow",
            "Action": VERSION_ACTIONS,
            "Resource": objects,
        }));
        statements.push(json!({
            "Sid": "SeeThatVersionsAreKept",
            "Effect": "Allow",
            "Action": "s3:GetBucketVersioning",
            "Resource": bucket_arn(&source.bucket),
        }));
    }
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

/// The statement that lets a volume with client-side encryption use its KMS
/// key: Decrypt (and GenerateDataKey, to write), only for data keys bound to
/// the volume's encryption context, in either format the volume reads. The key
/// must be named by its ARN: IAM does not match a key's alias or ID.
pub fn kms_statement(cse: &CseOptions, read_write: bool) -> Result<Value, String> {
    let arn = &cse.key_id;
    if !(arn.starts_with("arn:") && arn.contains(":kms:") && arn.contains(":key/")) {
        return Err(format!(
            "--cse-kms-key-id {arn}: a policy names a KMS key by its ARN \
             (arn:aws:kms:REGION:ACCOUNT:key/ID), not by an alias or ID"
        ));
    }
    let actions: &[&str] = match read_write {
        true => &["kms:Decrypt", "kms:GenerateDataKey"],
        false => &["kms:Decrypt"],
    };
    let mut context = serde_json::Map::new();
    context.insert(
        format!("kms:EncryptionContext:{}", crate::cse::envelope::CEK_ALG),
        json!(crate::cse::envelope::CONTENT_ALGORITHMS),
    );
    for (name, value) in &cse.context {
        context.insert(format!("kms:EncryptionContext:{name}"), json!(value));
    }
    Ok(json!({
        "Sid": "UseTheVolumeKey",
        "Effect": "Allow",
        "Action": actions,
        "Resource": arn,
        "Condition": { "StringEquals": context },
    }))
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

/// `s3vol policy`: prints the identity policy and, given who assumes the role
/// and with which external ID, the trust policy. Bad input exits 2, as for any
/// bad argument.
pub fn run(
    source: &Source,
    read_write: bool,
    versions: bool,
    trusted_principal: Option<&str>,
    external_id: Option<&str>,
    cse: Option<&CseOptions>,
) -> ExitCode {
    let mut identity = identity_policy(source, read_write, versions);
    if let Some(cse) = cse {
        match kms_statement(cse, read_write) {
            Ok(statement) => identity["Statement"]
                .as_array_mut()
                .expect("a list of statements")
                .push(statement),
            Err(e) => {
                eprintln!("s3vol: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let trust = match (trusted_principal, external_id) {
        (Some(principal), Some(id)) => {
            if let Err(e) = check_principal(principal).and(check_external_id(id)) {
                eprintln!("s3vol: {e}");
                return ExitCode::from(2);
            }
            Some(trust_policy(principal, id))
        }
        _ => None,
    };
    eprintln!("# Permissions policy: attach it to the role that s3vol assumes.");
    println!("{}", serde_json::to_string_pretty(&identity).expect("JSON"));
    if let Some(trust) = trust {
        eprintln!("# Trust policy: set it as the role's trust relationship.");
        println!("{}", serde_json::to_string_pretty(&trust).expect("JSON"));
    }
    ExitCode::SUCCESS
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
    fn an_encrypted_volume_may_use_its_key_only_with_its_context() {
        let key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let cse = CseOptions {
            key_id: key.into(),
            context: [("tenant".to_string(), "a".to_string())].into(),
            ..Default::default()
        };
        let read = kms_statement(&cse, false).unwrap();
        assert_eq!(read["Action"], json!(["kms:Decrypt"]));
        assert_eq!(read["Resource"], key);
        let condition = &read["Condition"]["StringEquals"];
        assert_eq!(condition["kms:EncryptionContext:tenant"], "a");
        assert_eq!(
            condition["kms:EncryptionContext:aws:x-amz-cek-alg"],
            json!(["115", "AES/GCM/NoPadding"])
        );
        let write = kms_statement(&cse, true).unwrap();
        assert_eq!(
            write["Action"],
            json!(["kms:Decrypt", "kms:GenerateDataKey"])
        );
        for alias in ["alias/volumes", "1234abcd-12ab-34cd-56ef-1234567890ab"] {
            let cse = CseOptions {
                key_id: alias.into(),
                ..cse.clone()
            };
            assert!(
                kms_statement(&cse, false)
                    .unwrap_err()
                    .contains("by its ARN")
            );
        }
    }

    #[test]
    fn read_only_policy_is_scoped_to_the_prefix() {
        let source: Source = "bkt/data/2024".parse().unwrap();
        let policy = identity_policy(&source, false, false);
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
        let policy = identity_policy(&source, true, false);
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
    fn a_view_of_the_past_adds_the_version_actions_only_when_asked() {
        let source: Source = "bkt/root".parse().unwrap();
        let plain = actions(&identity_policy(&source, false, false));
        let policy = identity_policy(&source, false, true);
        let added: Vec<(String, String)> = actions(&policy)
            .into_iter()
            .filter(|a| !plain.contains(a))
            .collect();
        let pair = |a: &str, r: &str| (a.to_string(), r.to_string());
        assert_eq!(
            added,
            [
                pair("s3:ListBucketVersions", "arn:aws:s3:::bkt"),
                pair("s3:GetObjectVersion", "arn:aws:s3:::bkt/root/*"),
                pair("s3:GetBucketVersioning", "arn:aws:s3:::bkt"),
            ]
        );
        // Listing versions is held to the prefix like listing objects.
        assert_eq!(
            policy["Statement"][2]["Condition"]["StringLike"]["s3:prefix"],
            json!(["root/", "root/*"])
        );
        for read_write in [false, true] {
            let granted = actions(&identity_policy(&source, read_write, false));
            assert!(
                granted.iter().all(|(a, _)| !a.contains("Version")),
                "{granted:?}"
            );
        }
    }

    #[test]
    fn whole_bucket_policy_has_no_prefix_condition() {
        let source: Source = "bkt".parse().unwrap();
        let policy = identity_policy(&source, false, false);
        assert!(policy["Statement"][0].get("Condition").is_none());
        assert_eq!(policy["Statement"][1]["Resource"], "arn:aws:s3:::bkt/*");
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
