//! Start-up checks: can these credentials read this volume? Each failure becomes one
//! sentence that says what is wrong and what to do, instead of a stack of SDK errors.

use crate::names::Source;
use crate::store::{ListRequest, ObjectStore, Operation, StoreError, bucket_arn};

/// Why a volume cannot be mounted, as the user should read it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PreflightError(pub String);

/// Lists one key under the prefix and reads the metadata of the first object found,
/// which exercises s3:ListBucket and s3:GetObject exactly where the mount will need
/// them. (HeadBucket is not used: a prefix-scoped policy rightly denies it.)
pub async fn check_readable(
    store: &dyn ObjectStore,
    source: &Source,
    endpoint: &str,
) -> Result<(), PreflightError> {
    let prefix = source.prefix.as_str();
    let page = store
        .list_objects(ListRequest {
            prefix,
            max_keys: Some(1),
            ..Default::default()
        })
        .await
        .map_err(|e| explain(e, source, endpoint))?;
    if page.objects.is_empty() && page.common_prefixes.is_empty() {
        if source.prefix.is_root() {
            return Ok(());
        }
        return Err(PreflightError(format!(
            "prefix '{prefix}' does not exist in bucket '{}': no key starts with it. \
             Check the spelling (keys are case-sensitive); a read-only volume of an empty \
             prefix would show nothing",
            source.bucket
        )));
    }
    if let Some(object) = page.objects.first() {
        store
            .head_object(&object.key)
            .await
            .map_err(|e| explain(e, source, endpoint))?;
    }
    Ok(())
}

/// Turns a store error met during start-up into advice.
pub fn explain(err: StoreError, source: &Source, endpoint: &str) -> PreflightError {
    let bucket = &source.bucket;
    let prefix = source.prefix.as_str();
    let text = match &err {
        StoreError::NoSuchBucket { info, .. } => format!(
            "bucket '{bucket}' does not exist at {endpoint} ({info}). Check the bucket name, \
             --region and --endpoint-url (some servers also answer this when the \
             credentials in use have no access to the bucket)"
        ),
        StoreError::AccessDenied { op, resource, info } => {
            let resource = match op {
                Operation::ListObjectsV2 => {
                    format!("{} (prefix '{prefix}')", bucket_arn(bucket))
                }
                _ => resource.clone(),
            };
            format!(
                "AccessDenied: {} on {resource} ({info}). The credentials in use are not \
                 allowed to do this; grant the action in the IAM policy, or check which \
                 credentials are in use (--profile, AWS_* variables)",
                op.iam_action()
            )
        }
        StoreError::Unreachable { detail, .. } => format!(
            "cannot reach S3 at {endpoint}: {detail}. Check --endpoint-url, that the \
             server is running, and the network between here and it"
        ),
        StoreError::Credentials { detail } => format!(
            "no usable AWS credentials: {detail}. Set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, pick a profile with --profile, or run where instance or \
             container credentials are available"
        ),
        other => format!("cannot read s3://{bucket}/{prefix} at {endpoint}: {other}"),
    };
    PreflightError(text)
}
