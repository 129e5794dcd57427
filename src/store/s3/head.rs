//! HEAD requests sent without the SDK's request pipeline.
//!
//! A volume that keeps metadata answers `ls -l` of a directory of N files with N
//! HEADs: a listing does not carry the mode, owner and times an object may hold.
//! The SDK spends about 140 µs of CPU on each (its interceptors, layered
//! configuration, endpoint rules and response classifiers run for every
//! request), and on two cores that, not the round trips, bounds the listing. A
//! HEAD has no body and its answer is a status and headers, so this module sends
//! it itself, at about a third of that, from the SDK's own parts: the endpoint
//! its rules resolve for the bucket (once, at mount), its SigV4 signer, its HTTP
//! connector (the same TLS, trust roots and connect timeout) and its header
//! parsers. It reads the two answers a HEAD mostly gets, 200 and 404; anything
//! else (denied, throttled, redirected, a header it cannot read) is sent again
//! through the SDK, whose errors are the store's.
//!
//! It signs exactly as the SDK does, or not at all. It is set up from the first
//! HEAD the SDK sends for the volume ([`Learner`]): the URL it was sent to gives
//! the bucket's URL (however the SDK's rules and the configuration chose it:
//! `--endpoint-url`, `AWS_ENDPOINT_URL_S3`, path or host style, FIPS, dual
//! stack), once the object's key, encoded here, is seen to end it; its
//! Authorization header gives the signing region, and must be plain SigV4
//! (not SigV4a, as Multi-Region Access Points need). It is used only with
//! credentials the volume renews itself, so no identity cache is bypassed.

use std::time::{Duration, SystemTime};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
use parking_lot::Mutex;
use percent_encoding::utf8_percent_encode;

use super::answer::to_system_time;
use super::{CONNECT_TIMEOUT, COPY_SOURCE_ESCAPES, S3Store, get};
use crate::store::{ObjectHeaders, ObjectInfo, Operation, Pin, StoreError, StoreResult};

/// What a HEAD answered, as far as this module reads it.
pub(super) enum Answer {
    Found(Box<Head>),
    NotFound,
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
    sent: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for LeanHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanHead")
            .field("base", &self.base)
            .finish()
    }
}

/// Watches the SDK's requests for the first HEAD of an object and keeps what
/// it was sent to and how it was signed.
#[derive(Debug, Default)]
pub(super) struct Learner {
    seen: AtomicBool,
    first: Mutex<Option<FirstHead>>,
}

/// What the first HEAD the SDK sent says.
#[derive(Clone, Debug)]
struct FirstHead {
    url: String,
    /// Its Authorization header: the signature's algorithm and scope.
    authorization: String,
    /// How it named itself, said again by each HEAD (a policy may look at it).
    user_agent: Vec<(&'static str, String)>,
}

/// The headers the SDK names itself with.
const USER_AGENT: [&str; 2] = ["user-agent", "x-amz-user-agent"];

/// The interceptor the SDK's client runs before sending each request.
#[derive(Debug)]
pub(super) struct LearnFirstHead(pub Arc<Learner>);

impl Intercept for LearnFirstHead {
    fn name(&self) -> &'static str {
        "LearnFirstHead"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let learner = &self.0;
        let request = context.request();
        if learner.seen.load(Ordering::Relaxed) || request.method() != "HEAD" {
            return Ok(());
        }
        let headers = request.headers();
        *learner.first.lock() = Some(FirstHead {
            url: request.uri().to_string(),
            authorization: headers.get("authorization").unwrap_or_default().to_string(),
            user_agent: USER_AGENT
                .into_iter()
                .filter_map(|name| Some((name, headers.get(name)?.to_string())))
                .collect(),
        });
        learner.seen.store(true, Ordering::Relaxed);
        Ok(())
    }
}

impl LeanHead {
    /// What the SDK's first HEAD teaches, once `key` is seen to be the one it
    /// asked for (`None` until then): a sender of HEADs where it sent it, or
    /// `Some(None)` when this module would not sign as it signed (see the
    /// module's documentation) and the SDK is to send every HEAD.
    pub(super) fn learn(
        learner: &Learner,
        key: &str,
        credentials: Option<&SharedCredentialsProvider>,
        connect_timeout: Duration,
    ) -> Option<Option<Self>> {
        let mut first = learner.first.lock();
        let url = &first.as_ref()?.url;
        let encoded = format!("/{}", utf8_percent_encode(key, COPY_SOURCE_ESCAPES));
        let path = url.split_once('?').map_or(url.as_str(), |(path, _)| path);
        let base = path.strip_suffix(encoded.as_str())?.to_string();
        // Learnt: the signature it holds is kept no longer.
        let first = first.take()?;
        Some(Self::signing_as(base, first, credentials, connect_timeout))
    }

    fn signing_as(
        base: String,
        first: FirstHead,
        credentials: Option<&SharedCredentialsProvider>,
        connect_timeout: Duration,
    ) -> Option<Self> {
        let credentials = credentials?.clone();
        // "AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/s3/aws4_request, ..."
        let scope = first
            .authorization
            .strip_prefix("AWS4-HMAC-SHA256 Credential=")?
            .split(',')
            .next()?;
        let (signing_region, service) = match scope.split('/').collect::<Vec<_>>()[..] {
            [_, _, region, service, "aws4_request"] => (region.to_string(), service),
            _ => return None,
        };
        if service != "s3" || !(base.starts_with("http://") || base.starts_with("https://")) {
            return None;
        }
        let settings = HttpConnectorSettings::builder()
            .connect_timeout(connect_timeout)
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
            user_agent: first.user_agent,
            signing_region,
            credentials,
            sent: Default::default(),
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
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(match response.status().as_u16() {
            200 => read_head(response.headers()).map(|head| Answer::Found(Box::new(head))),
            404 => Some(Answer::NotFound),
            _ => None,
        })
    }

    /// HEADs answered without the SDK.
    #[cfg(feature = "testing")]
    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
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
            .time(SystemTime::now())
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
        if let Some(Some(lean)) = self.lean_head.get() {
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
                Some(Answer::NotFound) => {
                    return Err(StoreError::NotFound {
                        op,
                        key: key.to_string(),
                    });
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
            .set_version_id(version_id.map(str::to_string))
            .send();
        let answer = self.answer(op, key, Duration::ZERO, request).await;
        if self.lean_head.get().is_none()
            && let Some(lean) =
                LeanHead::learn(&self.learner, key, self.renewed.as_ref(), CONNECT_TIMEOUT)
        {
            let _ = self.lean_head.set(lean);
        }
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
