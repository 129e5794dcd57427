//! A wrapper that fails or delays chosen calls of another store.
//!
//! Tests use it to drive error paths without a network: "the 3rd GetObject answers
//! AccessDenied", "every HeadObject takes 200 ms".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    ObjectStore, Operation, Presign, PresignedUrl, Request, Response, ServiceInfo, StoreError,
    StoreResult,
};

/// What an injected fault does to the call.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer AccessDenied, as a policy denial would.
    AccessDenied,
    /// Answer 403 with this S3 error code, taken as the S3 store takes it:
    /// `InvalidObjectState` for an object in an archive storage class not
    /// restored, `SignatureDoesNotMatch` for a wrong secret key, ...
    Forbidden(&'static str),
    /// Answer ExpiredToken, as S3 does for a revoked or expired session.
    ExpiredToken,
    /// Answer as if the endpoint could not be reached.
    Unreachable,
    /// Answer a generic injected error that is not worth retrying.
    Error,
    /// Answer 503 SlowDown, as S3 does under load.
    SlowDown,
    /// Answer 501 NotImplemented, as a server does for what it does not
    /// take (a condition on a write, say).
    NotImplemented,
    /// Make the call, then answer as if the connection broke before its answer
    /// arrived: the request took effect and the caller does not know.
    LostAnswer,
    /// Wait this long, then make the call.
    Delay(Duration),
    /// Make the call, then wait this long before answering: an answer that
    /// arrives after what it says has changed.
    LateAnswer(Duration),
    /// Panic, as a bug in the code that makes the call would.
    Panic,
}

#[derive(Clone, Debug)]
struct Rule {
    op: Operation,
    /// 1-based index of the call of `op` that the rule hits; `None` hits every call.
    nth: Option<usize>,
    fault: Fault,
}

pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    rules: Mutex<Vec<Rule>>,
    counts: Mutex<HashMap<Operation, usize>>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            rules: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Applies `fault` to the `nth` call (1-based, counted from now on) of `op`.
    pub fn fail_nth(&self, op: Operation, nth: usize, fault: Fault) {
        let already = self.count(op);
        self.rules.lock().push(Rule {
            op,
            nth: Some(already + nth),
            fault,
        });
    }

    /// Applies `fault` to every call of `op` until [`FaultyStore::clear`].
    pub fn fail_all(&self, op: Operation, fault: Fault) {
        self.rules.lock().push(Rule {
            op,
            nth: None,
            fault,
        });
    }

    /// S3's answer of HTTP `status` with error `code` to the `n`th call of
    /// `op` on `key`, taken as the S3 store takes it.
    fn answered(&self, op: Operation, key: &str, n: usize, code: &str, status: u16) -> StoreError {
        let info = ServiceInfo {
            code: code.into(),
            message: "(injected)".into(),
            request_id: Some(format!("injected-{n}")),
        };
        super::s3::service_error(self.inner.bucket(), op, key, code, Some(status), info)
    }

    pub fn clear(&self) {
        self.rules.lock().clear();
    }

    fn count(&self, op: Operation) -> usize {
        *self.counts.lock().get(&op).unwrap_or(&0)
    }

    /// Runs `call` with the faults that apply to this call of `op`.
    async fn around<T>(
        &self,
        op: Operation,
        key: &str,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let (lose_answer, late) = self.before(op, key).await?;
        let answer = call.await;
        if let Some(late) = late {
            tokio::time::sleep(late).await;
        }
        if lose_answer && answer.is_ok() {
            return Err(StoreError::Unreachable {
                op,
                detail: "connection reset before the answer (injected)".into(),
            });
        }
        answer
    }

    /// Counts the call and returns the error to answer with, after any delay, or
    /// whether the answer is to be lost, and how late it is to come.
    async fn before(&self, op: Operation, key: &str) -> StoreResult<(bool, Option<Duration>)> {
        let n = {
            let mut counts = self.counts.lock();
            let n = counts.entry(op).or_insert(0);
            *n += 1;
            *n
        };
        let hits: Vec<Fault> = self
            .rules
            .lock()
            .iter()
            .filter(|r| r.op == op && r.nth.is_none_or(|nth| nth == n))
            .map(|r| r.fault.clone())
            .collect();
        let (mut lose_answer, mut late) = (false, None);
        for fault in hits {
            match fault {
                Fault::LostAnswer => lose_answer = true,
                Fault::LateAnswer(d) => late = Some(d),
                Fault::SlowDown => {
                    return Err(StoreError::Service {
                        op,
                        key: key.to_string(),
                        info: ServiceInfo {
                            code: "SlowDown".into(),
                            message: "Please reduce your request rate. (injected)".into(),
                            request_id: Some(format!("injected-{n}")),
                        },
                    });
                }
                Fault::Delay(d) => tokio::time::sleep(d).await,
                Fault::NotImplemented => {
                    return Err(self.answered(op, key, n, "NotImplemented", 501));
                }
                Fault::Panic => panic!("a panic injected into {op} {key}"),
                Fault::AccessDenied => {
                    return Err(StoreError::AccessDenied {
                        op,
                        resource: super::object_arn(self.inner.bucket(), key),
                        info: ServiceInfo {
                            code: "AccessDenied".into(),
                            message: "Access Denied (injected)".into(),
                            request_id: Some(format!("injected-{n}")),
                        },
                    });
                }
                Fault::Forbidden(code) => return Err(self.answered(op, key, n, code, 403)),
                Fault::ExpiredToken => {
                    return Err(StoreError::ExpiredToken {
                        op,
                        info: ServiceInfo {
                            code: "ExpiredToken".into(),
                            message: "The provided token has expired. (injected)".into(),
                            request_id: Some(format!("injected-{n}")),
                        },
                    });
                }
                Fault::Unreachable => {
                    return Err(StoreError::Unreachable {
                        op,
                        detail: "connection refused (injected)".into(),
                    });
                }
                Fault::Error => {
                    return Err(StoreError::Injected {
                        op,
                        detail: format!("call {n} of {op}"),
                    });
                }
            }
        }
        Ok((lose_answer, late))
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn send(&self, request: Request<'_>) -> StoreResult<Response> {
        let (op, key) = (request.operation(), request.key());
        // What a copy meets concerns its source too, as the S3 store says.
        let source = match &request {
            Request::Copy { from, .. } | Request::CopyPart { from, .. } => Some(*from),
            _ => None,
        };
        let answer = self.around(op, key, self.inner.send(request)).await;
        match source {
            Some(from) => answer.map_err(|e| e.of_copy_from(self.inner.bucket(), from)),
            None => answer,
        }
    }

    async fn presign(&self, key: &str, request: &Presign) -> StoreResult<PresignedUrl> {
        self.inner.presign(key, request).await
    }
}
