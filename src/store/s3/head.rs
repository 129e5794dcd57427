//! HEAD requests sent without the SDK's request pipeline.
//!
//! A volume that keeps metadata answers `ls -l` of a directory of N files with N
//! HEADs: a listing does not carry the mode, owner and times an object may hold.
//! The SDK spends about 140 µs of CPU on each (its interceptors, layered
//! configuration, endpoint rules and response classifiers run for every
//! request), and on two cores that, not the round trips, bounds the listing. A
//! HEAD has no body and its answer is a status and headers, so this module sends
//! it itself, at about a third of that, from the SDK's own parts: where the SDK
//! sent its first HEAD, its SigV4 signer, its HTTP connector (the same TLS,
//! trust roots, proxy and connect timeout) and its header parsers.
//!
//! It signs exactly as the SDK does, or not at all. It is set up from the first
//! HEAD the SDK sends for the volume ([`LearnFrom`], an interceptor of that one
//! request, which knows its key): the URL it was sent to gives the bucket's URL
//! (however the SDK's rules and the configuration chose it: `--endpoint-url`,
//! `AWS_ENDPOINT_URL_S3`, path or host style, FIPS, dual stack), once the key,
//! encoded here, is seen to end it; its Authorization header gives the signing
//! region, and must be plain SigV4 for S3 (not SigV4a, as Multi-Region Access
//! Points need, nor S3 Express sessions). Nothing of its signature is kept. It
//! is used only with credentials the volume renews itself (no identity cache
//! is bypassed) and the SDK's default HTTP client. Times are signed with the
//! clock skew the answers' `Date` headers show, as the SDK corrects its own.
//!
//! Each answer it gets is read here: a 200 into the object's facts, any other
//! status into the error the SDK's answer would have made (a HEAD's answer has
//! no body, so its status is all there is). Only a 200 whose headers do not
//! read as the SDK reads them, or credentials that cannot be had, send the
//! HEAD again through the SDK.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_http_client::Connector;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{HttpConnector, HttpConnectorSettings};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::{Headers, header_parse};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::{DateTime, Format};
use percent_encoding::utf8_percent_encode;
use tracing::debug;

use super::answer::{bodiless_error, to_system_time};
use super::{COPY_SOURCE_ESCAPES, S3Store, get};
use crate::store::{ObjectHeaders, ObjectInfo, Operation, Pin, StoreError, StoreResult};

/// What a HEAD answered, as far as this module reads it.
pub(super) enum Answer {
    Found(Box<Head>),
    /// Any other status (404 among them), with the request's ID.
    Refused {
        status: u16,
        request_id: Option<String>,
    },
}

/// The parts of a 200 answer to a HEAD the store keeps.
pub(super) struct Head {
    pub size: u64,
    pub etag: String,
    pub last_modified: SystemTime,
    pub version_id: Option<String>,
    pub headers: ObjectHeaders,
}

pub(super) struct LeanHead {
    connector: Connector,
    /// The bucket's URL as the SDK sent its first HEAD to (the bucket in the
    /// host, or in the path for path-style), without a trailing slash.
    base: String,
    /// The User-Agent headers of the SDK's first HEAD.
    user_agent: Vec<(&'static str, String)>,
    signing_region: String,
    credentials: SharedCredentialsProvider,
    /// The server's clock less this host's, in milliseconds, as its last
    /// answer's `Date` showed.
    skew_ms: AtomicI64,
    /// HEADs answered here, and sent again through the SDK.
    pub(super) answered: AtomicU64,
    pub(super) resent: AtomicU64,
}

/// Where the store's sender of HEADs is kept: empty until the SDK's first
/// HEAD fills it, `None` in it where this module would not sign as the SDK.
pub(super) type Slot = Arc<OnceLock<Option<LeanHead>>>;

impl std::fmt::Debug for LeanHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanHead")
            .field("base", &self.base)
            .finish()
    }
}

/// The headers the SDK names itself with.
const USER_AGENT: [&str; 2] = ["user-agent", "x-amz-user-agent"];

/// An interceptor of one HEAD the SDK sends while the slot is empty: as the
/// request leaves, fills the slot from it.
pub(super) struct LearnFrom {
    pub key: String,
    pub slot: Slot,
    pub credentials: SharedCredentialsProvider,
}

impl std::fmt::Debug for LearnFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnFrom").field("key", &self.key).finish()
    }
}

impl Intercept for LearnFrom {
    fn name(&self) -> &'static str {
        "LearnFrom"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.slot.get().is_none() {
            let learned = LeanHead::learn(&self.key, context.request(), &self.credentials);
            match &learned {
                Some(lean) => debug!(
                    base = lean.base,
                    region = lean.signing_region,
                    "HEADs are signed and sent here from now on, not through the SDK"
                ),
                None => debug!("HEADs go through the SDK: its first one was not learnt"),
            }
            let _ = self.slot.set(learned);
        }
        Ok(())
    }
}

impl LeanHead {
    /// A sender of HEADs where the SDK sent `request`, its HEAD of `key`,
    /// signing as it signed it; `None` when this module would not (see the
    /// module's documentation).
    fn learn(
        key: &str,
        request: &HttpRequest,
        credentials: &SharedCredentialsProvider,
    ) -> Option<Self> {
        let url = request.uri();
        let encoded = format!("/{}", utf8_percent_encode(key, COPY_SOURCE_ESCAPES));
        let path = url.split_once('?').map_or(url, |(path, _)| path);
        let base = path.strip_suffix(encoded.as_str())?.to_string();
        let headers = request.headers();
        // "AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/s3/aws4_request, ..."
        let scope = headers
            .get("authorization")?
            .strip_prefix("AWS4-HMAC-SHA256 Credential=")?
            .split(',')
            .next()?;
        let (signing_region, service) = match scope.split('/').collect::<Vec<_>>()[..] {
            [_, _, region, service, "aws4_request"] => (region.to_string(), service),
            _ => return None,
        };
        if key.is_empty()
            || service != "s3"
            || !(base.starts_with("http://") || base.starts_with("https://"))
        {
            return None;
        }
        let user_agent = USER_AGENT
            .into_iter()
            .filter_map(|name| Some((name, headers.get(name)?.to_string())))
            .collect();
        let settings = HttpConnectorSettings::builder()
            .connect_timeout(super::CONNECT_TIMEOUT)
            .build();
        // As the SDK's own client is made: a proxy the environment names
        // (HTTPS_PROXY, NO_PROXY, ...) is used.
        let connector = Connector::builder()
            .connector_settings(settings)
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .proxy_config(ProxyConfig::from_env())
            .build();
        Some(Self {
            connector,
            base,
            user_agent,
            signing_region,
            credentials: credentials.clone(),
            skew_ms: AtomicI64::new(0),
            answered: AtomicU64::new(0),
            resent: AtomicU64::new(0),
        })
    }

    /// A HEAD of `key` (only if its ETag is `if_match`, of version
    /// `version_id`): `Ok(None)` when the SDK is to send it instead, an error
    /// (what failed) when no answer came.
    pub(super) async fn head(
        &self,
        key: &str,
        if_match: Option<&str>,
        version_id: Option<&str>,
    ) -> Result<Option<Answer>, String> {
        if key.is_empty() {
            // The bucket's own URL: the SDK refuses it in its words.
            return Ok(None);
        }
        let mut url = format!(
            "{}/{}",
            self.base,
            utf8_percent_encode(key, COPY_SOURCE_ESCAPES)
        );
        if let Some(id) = version_id {
            url.push_str("?versionId=");
            url.extend(utf8_percent_encode(id, COPY_SOURCE_ESCAPES));
        }
        // Credentials that cannot be had: the SDK says so in its words.
        let Some(request) = self.signed(&url, if_match).await else {
            return Ok(None);
        };
        let response = self
            .connector
            .call(request)
            .await
            .map_err(|e| crate::logging::error_chain(&e))?;
        let headers = response.headers();
        self.learn_skew(headers);
        let answer = match response.status().as_u16() {
            200 => read_head(headers).map(|head| Answer::Found(Box::new(head))),
            status => Some(Answer::Refused {
                status,
                request_id: headers.get("x-amz-request-id").map(str::to_string),
            }),
        };
        let counter = if answer.is_some() {
            &self.answered
        } else {
            &self.resent
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(answer)
    }

    /// Keeps the skew of the server's clock the answer's `Date` shows, as
    /// the SDK does for the requests it signs.
    fn learn_skew(&self, headers: &Headers) {
        let Some(date) = headers
            .get("date")
            .and_then(|date| DateTime::from_str(date, Format::HttpDate).ok())
            .and_then(|date| SystemTime::try_from(date).ok())
        else {
            return;
        };
        let skew = match date.duration_since(SystemTime::now()) {
            Ok(ahead) => ahead.as_millis() as i64,
            Err(behind) => -(behind.duration().as_millis() as i64),
        };
        self.skew_ms.store(skew, Ordering::Relaxed);
    }

    /// This host's time corrected by the server's skew.
    fn now(&self) -> SystemTime {
        let skew = self.skew_ms.load(Ordering::Relaxed);
        let now = SystemTime::now();
        let by = Duration::from_millis(skew.unsigned_abs());
        if skew >= 0 { now + by } else { now - by }
    }

    /// The HEAD of `url`, signed as the SDK signs S3 requests: the path as
    /// sent (encoded once, not normalized) and the hash of the empty body.
    async fn signed(&self, url: &str, if_match: Option<&str>) -> Option<HttpRequest> {
        let identity: Identity = self.credentials.provide_credentials().await.ok()?.into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.signing_region)
            .name("s3")
            .time(self.now())
            .settings(settings)
            .build()
            .ok()?
            .into();
        let headers: Vec<(&str, &str)> = if_match
            .map(|etag| ("if-match", etag))
            .into_iter()
            .chain(
                self.user_agent
                    .iter()
                    .map(|(name, value)| (*name, value.as_str())),
            )
            .collect();
        // Signed as the SDK signs: every header but those its signer leaves
        // out (User-Agent among them).
        let signable = SignableRequest::new(
            "HEAD",
            url,
            headers.iter().copied(),
            SignableBody::Bytes(&[]),
        )
        .ok()?;
        let (instructions, _) = sign(signable, &params).ok()?.into_parts();
        let mut request = http::Request::builder().method("HEAD").uri(url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut request = request.body(SdkBody::empty()).ok()?;
        instructions.apply_to_request_http1x(&mut request);
        HttpRequest::try_from(request).ok()
    }
}

impl S3Store {
    /// A HEAD of `key`, or of one version of it.
    pub(super) async fn head(&self, key: &str, pin: Pin<'_>) -> StoreResult<ObjectInfo> {
        let (op, if_match, version_id) = match pin {
            Pin::Current(etag) => (Operation::HeadObject, etag, None),
            Pin::Version(id) => (Operation::GetObjectVersion, None, Some(id)),
        };
        if let Some(Some(lean)) = self.lean.get() {
            let limit = self.stall_limit();
            let answer =
                match tokio::time::timeout(limit, lean.head(key, if_match, version_id)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(format!(
                        "no answer within {}",
                        humantime::format_duration(limit)
                    )),
                };
            match answer.map_err(|detail| StoreError::Unreachable { op, detail })? {
                Some(Answer::Found(head)) => {
                    get::check_pin(op, key, pin, &head.etag, head.version_id.as_deref())?;
                    return Ok(ObjectInfo {
                        key: key.to_string(),
                        size: head.size,
                        etag: head.etag,
                        last_modified: head.last_modified,
                        version_id: head.version_id,
                        headers: Some(head.headers),
                    });
                }
                Some(Answer::Refused { status, request_id }) => {
                    let error = bodiless_error(&self.bucket, op, key, status, request_id);
                    return Err(get::naming_etag(error, if_match));
                }
                // An answer it does not read: the SDK asks again, and its
                // error is the store's.
                None => {}
            }
        }
        let request = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(if_match.map(str::to_string))
            .set_version_id(version_id.map(str::to_string));
        // Until the slot is filled (never empty without renewed credentials,
        // see `from_sdk_config`), each HEAD the SDK sends may teach it.
        let answer = match (self.lean.get(), &self.credentials) {
            (None, Some(credentials)) => {
                let learn = LearnFrom {
                    key: key.to_string(),
                    slot: self.lean.clone(),
                    credentials: credentials.clone(),
                };
                let request = request.customize().interceptor(learn).send();
                self.answer(op, key, Duration::ZERO, request).await
            }
            _ => self.answer(op, key, Duration::ZERO, request.send()).await,
        };
        let out = answer.map_err(|e| get::naming_etag(e, if_match))?;
        let etag = out.e_tag().unwrap_or_default();
        get::check_pin(op, key, pin, etag, out.version_id())?;
        let headers = object_headers!(out);
        Ok(ObjectInfo {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out.e_tag().unwrap_or_default().to_string(),
            last_modified: to_system_time(out.last_modified()),
            version_id: out.version_id().map(str::to_string),
            headers: Some(headers),
        })
    }
}

/// The object a 200 answer describes, read as the SDK reads a HeadObject
/// answer (its own header parsers); `None` when a header it needs does not
/// read.
fn read_head(headers: &Headers) -> Option<Head> {
    let one = |name: &str| -> Option<Option<String>> {
        header_parse::one_or_none_bytes(headers.get_all_bytes(name)).ok()
    };
    let size = match header_parse::read_many_primitive_bytes::<i64>(
        headers.get_all_bytes("content-length"),
    )
    .ok()?
    .as_slice()
    {
        [size] => (*size).max(0) as u64,
        _ => return None,
    };
    let last_modified: Vec<DateTime> =
        header_parse::many_dates_bytes(headers.get_all_bytes("last-modified"), Format::HttpDate)
            .ok()?;
    if last_modified.len() > 1 {
        return None;
    }
    let mut user = std::collections::BTreeMap::new();
    let names: Vec<&str> = headers.iter_bytes().map(|(name, _)| name).collect();
    for (suffix, name) in header_parse::headers_for_prefix(names.into_iter(), "x-amz-meta-") {
        let value: String = one(name)??;
        user.insert(suffix.to_ascii_lowercase(), value);
    }
    Some(Head {
        size,
        etag: one("etag")?.unwrap_or_default(),
        last_modified: to_system_time(last_modified.first()),
        version_id: one("x-amz-version-id")?,
        headers: ObjectHeaders {
            user,
            content_type: one("content-type")?,
            content_encoding: one("content-encoding")?,
            content_disposition: one("content-disposition")?,
            content_language: one("content-language")?,
            cache_control: one("cache-control")?,
            sse: one("x-amz-server-side-encryption")?,
            sse_kms_key_id: one("x-amz-server-side-encryption-aws-kms-key-id")?,
            storage_class: one("x-amz-storage-class")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;

    const SIGV4: &str = "AWS4-HMAC-SHA256 Credential=AKID/20261206/eu-west-3/s3/aws4_request, \
                         SignedHeaders=host;x-amz-date, Signature=0123";

    fn renewed() -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(Credentials::new("AKID", "SECRET", None, None, "test"))
    }

    /// The HEAD the SDK sent to `url`, signed as `authorization` says.
    fn sent(url: &str, authorization: &str) -> HttpRequest {
        let request = http::Request::builder()
            .method("HEAD")
            .uri(url)
            .header("authorization", authorization)
            .header("x-amz-user-agent", "aws-sdk-rust/1")
            .body(SdkBody::empty())
            .unwrap();
        HttpRequest::try_from(request).unwrap()
    }

    #[test]
    fn the_bucket_url_is_what_precedes_the_key_the_head_was_for() {
        let url = "https://b.s3.eu-west-3.amazonaws.com/d/sp%20ace%2B%C3%A9%2A";
        let lean = LeanHead::learn("d/sp ace+é*", &sent(url, SIGV4), &renewed()).unwrap();
        assert_eq!(lean.base, "https://b.s3.eu-west-3.amazonaws.com");
        assert_eq!(lean.signing_region, "eu-west-3");
        assert_eq!(
            lean.user_agent,
            [("x-amz-user-agent", "aws-sdk-rust/1".to_string())]
        );
        // A path before the bucket, a port, a version asked for.
        let url = "http://127.0.0.1:9000/gateway/bkt/k/k?versionId=v";
        let lean = LeanHead::learn("k/k", &sent(url, SIGV4), &renewed()).unwrap();
        assert_eq!(lean.base, "http://127.0.0.1:9000/gateway/bkt");
    }

    #[test]
    fn nothing_is_learnt_where_it_would_not_sign_as_the_sdk_signed() {
        let url = "https://b.s3.amazonaws.com/a%20b";
        let learn = |key: &str, url: &str, authorization: &str| {
            LeanHead::learn(key, &sent(url, authorization), &renewed()).is_some()
        };
        assert!(learn("a b", url, SIGV4));
        // The key encoded otherwise than here.
        assert!(!learn("a b", "https://b.s3.amazonaws.com/a+b", SIGV4));
        // SigV4a (Multi-Region Access Points) and S3 Express sessions.
        let sigv4a = SIGV4.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256");
        assert!(!learn("a b", url, &sigv4a));
        assert!(!learn("a b", url, &SIGV4.replace("/s3/", "/s3express/")));
        assert!(!learn("a b", url, ""));
        // No key: the URL would be the bucket's.
        assert!(!learn("", "https://b.s3.amazonaws.com/", SIGV4));
    }

    #[test]
    fn an_answer_is_read_as_the_sdk_reads_it_or_not_at_all() {
        let mut headers = Headers::new();
        headers.insert("content-length", "42");
        headers.insert("etag", "\"e\"");
        headers.insert("last-modified", "Sun, 06 Dec 2026 13:10:00 GMT");
        headers.insert("x-amz-meta-Mode", " 0100640 ");
        headers.insert("x-amz-meta-json", "{\"a\":\"b, c\"}");
        let head = read_head(&headers).unwrap();
        assert_eq!((head.size, head.etag.as_str()), (42, "\"e\""));
        assert_eq!(head.headers.user["mode"], "0100640");
        assert_eq!(head.headers.user["json"], "{\"a\":\"b, c\"}");
        assert_ne!(head.last_modified, SystemTime::UNIX_EPOCH);
        // Two sizes, or a metadata value twice: the SDK refuses them too.
        let mut twice = headers.clone();
        twice.append("content-length", "43");
        assert!(read_head(&twice).is_none());
        let mut twice = headers.clone();
        twice.append("x-amz-meta-json", "{}");
        assert!(read_head(&twice).is_none());
        headers.remove("content-length");
        assert!(read_head(&headers).is_none());
    }
}
