//! Credentials that are renewed ahead of expiry, for as long as the mount lives.
//!
//! The SDK's own identity cache refreshes credentials only when a request finds them
//! about to expire, inside that request. s3vol instead runs one background task per
//! mount that fetches new credentials (STS AssumeRole in production) when
//! `renew_before` of their lifetime is left, and hands every request whatever is
//! current: a request never waits on STS and never carries expired credentials while
//! renewal works.
//!
//! A failed renewal is retried with exponential backoff while the current
//! credentials stay in use. If they expire before a renewal succeeds, requests fail
//! with a credentials error (the filesystem answers EACCES) naming the last renewal
//! error, and the mount recovers by itself at the next successful renewal.
//!
//! When S3 refuses credentials that are current here (ExpiredToken: a revoked
//! session, a skewed clock), [`RenewingCredentials::renew_now`] renews at once. Only
//! one renewal runs at a time, and requests that were refused together share it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};
use parking_lot::Mutex;
use tokio::sync::Notify;

use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Credentials are treated as expired this long before their stated expiry: a
/// request signed in the last instant could reach S3 after it and be refused.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// Where fresh credentials come from.
#[async_trait]
pub trait CredentialSource: Send + Sync + 'static {
    /// New credentials, or why none could be had.
    async fn fetch(&self) -> Result<Credentials, FetchError>;
}

/// Why no credentials could be had: what happened, in words that never hold a
/// secret, and which kind of failure it was, so messages can say what to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchError {
    pub cause: FetchCause,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchCause {
    /// No answer: the connection was refused, reset or timed out.
    Unreachable,
    /// The service answered, and refused (AccessDenied).
    Denied,
    /// Anything else.
    Other,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&str> for FetchError {
    fn from(message: &str) -> Self {
        Self {
            cause: FetchCause::Other,
            message: message.to_string(),
        }
    }
}

/// The wall clock, replaceable in tests.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

#[derive(Clone, Debug)]
pub struct RenewConfig {
    /// Renew when this much lifetime is left.
    pub renew_before: Duration,
    /// First wait after a failed renewal; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A fetch with no answer for this long has failed: STS behind a connection
    /// that went silent must not stall renewal until the credentials expire.
    pub fetch_timeout: Duration,
    /// Whether each renewal comes at a random moment up to half of
    /// `renew_before` early (see [`renewal_delay`]).
    pub spread: bool,
}

impl Default for RenewConfig {
    fn default() -> Self {
        Self {
            renew_before: Duration::from_secs(300),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(30),
            spread: true,
        }
    }
}

struct Shared {
    current: Mutex<Credentials>,
    /// Why the last renewal failed, while none has succeeded since.
    last_error: Mutex<Option<FetchError>>,
    renewals: AtomicU64,
    failed_renewals: AtomicU64,
    clock: Arc<dyn Clock>,
    source: Arc<dyn CredentialSource>,
    /// Held for the length of a renewal, scheduled or forced, so only one runs.
    renewing: tokio::sync::Mutex<()>,
    /// Tells the schedule that a forced renewal replaced the credentials.
    forced: Notify,
    /// What is renewed (role and session name), for logs and errors.
    label: String,
    fetch_timeout: Duration,
    /// When the next scheduled renewal comes.
    next_renewal: Mutex<Option<SystemTime>>,
}

/// Fetches from `source`, for at most `timeout`.
async fn fetch_within(
    source: &dyn CredentialSource,
    timeout: Duration,
) -> Result<Credentials, FetchError> {
    tokio::time::timeout(timeout, source.fetch())
        .await
        .unwrap_or_else(|_| {
            Err(FetchError {
                cause: FetchCause::Unreachable,
                message: format!("no answer within {}", humantime::format_duration(timeout)),
            })
        })
}

impl Shared {
    /// Fetches new credentials and installs them. The caller holds `renewing`.
    async fn renew(&self, reason: &str) -> Result<(), String> {
        match fetch_within(self.source.as_ref(), self.fetch_timeout).await {
            Ok(fresh) => {
                let new_expiry = fresh.expiry();
                *self.current.lock() = fresh;
                *self.last_error.lock() = None;
                let n = self.renewals.fetch_add(1, Ordering::Relaxed) + 1;
                info!(
                    credentials = self.label,
                    renewal = n,
                    reason,
                    expires = new_expiry.map(show_time).unwrap_or_default(),
                    "credentials renewed"
                );
                Ok(())
            }
            Err(e) => {
                *self.last_error.lock() = Some(e.clone());
                self.failed_renewals.fetch_add(1, Ordering::Relaxed);
                Err(e.message)
            }
        }
    }
}

/// A credentials provider that always answers at once with the current credentials.
#[derive(Clone)]
pub struct RenewingCredentials {
    shared: Arc<Shared>,
    /// Ends the renewal task once no one holds the credentials: a store made
    /// for one call (the CSI controller's) leaves no task renewing behind it.
    _renewal: Arc<AbortOnDrop>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for RenewingCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewingCredentials")
            .field("label", &self.shared.label)
            .finish_non_exhaustive()
    }
}

fn show_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl RenewingCredentials {
    /// Fetches the first credentials (an error here fails the mount) and starts the
    /// renewal task, which runs until the returned handle is aborted or the
    /// last clone of the credentials is dropped.
    pub async fn start(
        source: Arc<dyn CredentialSource>,
        config: RenewConfig,
        clock: Arc<dyn Clock>,
        label: String,
    ) -> Result<(Self, JoinHandle<()>), FetchError> {
        let first = fetch_within(source.as_ref(), config.fetch_timeout).await?;
        if let Some(expiry) = first.expiry() {
            info!(
                credentials = label,
                expires = show_time(expiry),
                "credentials obtained"
            );
        }
        let shared = Arc::new(Shared {
            current: Mutex::new(first),
            last_error: Mutex::new(None),
            renewals: AtomicU64::new(0),
            failed_renewals: AtomicU64::new(0),
            clock,
            source,
            renewing: tokio::sync::Mutex::new(()),
            forced: Notify::new(),
            label,
            fetch_timeout: config.fetch_timeout,
            next_renewal: Mutex::new(None),
        });
        let task = tokio::spawn(renew_loop(shared.clone(), config));
        let renewal = Arc::new(AbortOnDrop(task.abort_handle()));
        Ok((
            Self {
                shared,
                _renewal: renewal,
            },
            task,
        ))
    }

    /// The current credentials, or an error if they have expired.
    pub fn current(&self) -> Result<Credentials, CredentialsError> {
        let creds = self.shared.current.lock().clone();
        match creds.expiry() {
            Some(expiry) if expiry <= self.shared.clock.now() + EXPIRY_MARGIN => {
                let cause = self.shared.last_error.lock().as_ref().map_or_else(
                    || "no renewal has completed yet".into(),
                    |e| e.message.clone(),
                );
                Err(CredentialsError::provider_error(format!(
                    "credentials for {} expired at {} and renewal is failing: {cause}",
                    self.shared.label,
                    show_time(expiry)
                )))
            }
            _ => Ok(creds),
        }
    }

    /// Successful renewals so far.
    pub fn renewals(&self) -> u64 {
        self.shared.renewals.load(Ordering::Relaxed)
    }

    /// How the credentials stand: for the statistics and the volume's health.
    pub fn status(&self) -> CredentialStatus {
        CredentialStatus {
            renewals: self.renewals(),
            failed_renewals: self.shared.failed_renewals.load(Ordering::Relaxed),
            expires: self.shared.current.lock().expiry(),
            next_renewal: *self.shared.next_renewal.lock(),
            renewal_failing: self.shared.last_error.lock().as_ref().map(|e| e.cause),
        }
    }
}

/// What [`RenewingCredentials::status`] says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialStatus {
    /// Successful renewals so far.
    pub renewals: u64,
    /// Attempts that failed (each is retried).
    pub failed_renewals: u64,
    /// When the current credentials expire; `None` for keys that do not.
    pub expires: Option<SystemTime>,
    /// When the next scheduled renewal comes, once one is scheduled.
    pub next_renewal: Option<SystemTime>,
    /// How the last attempt failed, while none has succeeded since (STS's
    /// words are in the log only: they may name the node's own identity).
    pub renewal_failing: Option<FetchCause>,
}

impl FetchCause {
    /// The word the report says it with.
    pub fn word(self) -> &'static str {
        match self {
            FetchCause::Unreachable => "unreachable",
            FetchCause::Denied => "refused",
            FetchCause::Other => "failed",
        }
    }
}

impl RenewingCredentials {
    /// Renews now, because S3 refused the credentials of generation `seen` (the
    /// [`RenewingCredentials::renewals`] they were signed after) as expired; `why`
    /// is logged. Waits for a renewal under way, and does nothing when the
    /// credentials were replaced since, so requests refused together share one
    /// renewal.
    pub async fn renew_since(&self, seen: u64, why: &str) -> Result<(), String> {
        let _renewing = self.shared.renewing.lock().await;
        if self.renewals() != seen {
            return Ok(());
        }
        let result = self.shared.renew(why).await;
        match &result {
            Ok(()) => self.shared.forced.notify_one(),
            Err(e) => warn!(
                credentials = self.shared.label,
                error = e,
                "forced credential renewal failed"
            ),
        }
        result
    }
}

impl ProvideCredentials for RenewingCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::ready(self.current())
    }
}

/// How long to wait before renewing credentials that expire at `expiry`: until
/// `renew_before` is left, less up to half of `renew_before` more by `spread`
/// (from 0 to 1: a host that mounts a hundred volumes at once must not have
/// them all renew in the same second, at every renewal); or half the
/// remaining lifetime when less than `renew_before` is left already (so a
/// short session is renewed in time, not in a busy loop).
pub fn renewal_delay(
    expiry: SystemTime,
    now: SystemTime,
    renew_before: Duration,
    spread: f64,
) -> Duration {
    let remaining = expiry.duration_since(now).unwrap_or(Duration::ZERO);
    if remaining > renew_before {
        let slack = remaining - renew_before;
        slack
            - (renew_before / 2)
                .min(slack)
                .mul_f64(spread.clamp(0.0, 1.0))
    } else {
        remaining / 2
    }
}

async fn renew_loop(shared: Arc<Shared>, config: RenewConfig) {
    loop {
        let expiry = shared.current.lock().expiry();
        // Credentials without an expiry (static keys) never need renewing.
        let Some(expiry) = expiry else { return };
        let seen = shared.renewals.load(Ordering::Relaxed);
        let delay = renewal_delay(
            expiry,
            shared.clock.now(),
            config.renew_before,
            if config.spread { fastrand::f64() } else { 0.0 },
        );
        *shared.next_renewal.lock() = Some(shared.clock.now() + delay);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            // Replaced early: schedule from the new expiry.
            () = shared.forced.notified() => continue,
        }
        let mut backoff = config.min_backoff;
        loop {
            let result = {
                let _renewing = shared.renewing.lock().await;
                if shared.renewals.load(Ordering::Relaxed) != seen {
                    break; // a forced renewal got there first
                }
                shared.renew("scheduled").await
            };
            let Err(e) = result else { break };
            let expired = expiry <= shared.clock.now();
            warn!(
                credentials = shared.label,
                error = e,
                retry_in = ?backoff,
                "credential renewal failed; {}",
                if expired {
                    "the current credentials have expired: requests fail until a renewal succeeds".to_string()
                } else {
                    format!("keeping the current credentials until {}", show_time(expiry))
                }
            );
            *shared.next_renewal.lock() = Some(shared.clock.now() + backoff);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shared.forced.notified() => break,
            }
            backoff = (backoff * 2).min(config.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Wall time that moves with tokio's (paused) clock.
    struct TestClock {
        start_wall: SystemTime,
        start: tokio::time::Instant,
    }

    impl Clock for TestClock {
        fn now(&self) -> SystemTime {
            self.start_wall + self.start.elapsed()
        }
    }

    /// Hands out credentials valid for `lifetime`, or the scripted failures first.
    struct ScriptedSource {
        clock: Arc<TestClock>,
        lifetime: Duration,
        script: Mutex<VecDeque<bool>>,
        fetches: Mutex<Vec<SystemTime>>,
        /// Fetches still to come that never answer.
        hangs: Mutex<u32>,
    }

    #[async_trait]
    impl CredentialSource for ScriptedSource {
        async fn fetch(&self) -> Result<Credentials, FetchError> {
            let now = self.clock.now();
            self.fetches.lock().push(now);
            let hang = {
                let mut hangs = self.hangs.lock();
                let hang = *hangs > 0 && self.fetches.lock().len() > 1;
                *hangs -= u32::from(hang);
                hang
            };
            if hang {
                std::future::pending::<()>().await;
            }
            if self.script.lock().pop_front() == Some(false) {
                return Err("STS unreachable (scripted)".into());
            }
            let n = self.fetches.lock().len();
            Ok(Credentials::new(
                format!("AKIA{n}"),
                "secret",
                Some("token".into()),
                Some(now + self.lifetime),
                "test",
            ))
        }
    }

    fn setup(lifetime: Duration, script: &[bool]) -> (Arc<TestClock>, Arc<ScriptedSource>) {
        let clock = Arc::new(TestClock {
            start_wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            start: tokio::time::Instant::now(),
        });
        let source = Arc::new(ScriptedSource {
            clock: clock.clone(),
            lifetime,
            script: Mutex::new(script.iter().copied().collect()),
            fetches: Mutex::new(Vec::new()),
            hangs: Mutex::new(0),
        });
        (clock, source)
    }

    /// Renewals at the moment `renew_before` is left, so that tests can say
    /// when they come.
    fn config(renew_before: u64) -> RenewConfig {
        RenewConfig {
            renew_before: Duration::from_secs(renew_before),
            spread: false,
            ..RenewConfig::default()
        }
    }

    #[test]
    fn delay_leaves_renew_before_or_half_the_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let secs = Duration::from_secs;
        assert_eq!(
            renewal_delay(now + secs(3600), now, secs(300), 0.0),
            secs(3300)
        );
        assert_eq!(
            renewal_delay(now + secs(400), now, secs(300), 0.0),
            secs(100)
        );
        assert_eq!(renewal_delay(now + secs(900), now, secs(895), 0.0), secs(5));
        assert_eq!(renewal_delay(now + secs(10), now, secs(300), 0.5), secs(5));
        assert_eq!(
            renewal_delay(now - secs(10), now, secs(300), 0.5),
            Duration::ZERO
        );
        // Spread over up to half of renew_before more, never past the slack.
        assert_eq!(
            renewal_delay(now + secs(3600), now, secs(300), 1.0),
            secs(3150)
        );
        assert_eq!(renewal_delay(now + secs(400), now, secs(300), 1.0), secs(0));
        assert_eq!(
            renewal_delay(now + secs(3600), now, secs(300), 7.0),
            secs(3150)
        );
    }

    /// A hundred volumes whose sessions were assumed in the same second renew
    /// over two and a half minutes, not in the same second.
    #[test]
    fn a_hundred_volumes_renew_apart() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at: std::collections::BTreeSet<u64> = (0..100)
            .map(|_| {
                renewal_delay(
                    now + Duration::from_secs(3600),
                    now,
                    Duration::from_secs(300),
                    fastrand::f64(),
                )
                .as_secs()
            })
            .collect();
        assert!(at.len() >= 40, "100 renewals fell in {} seconds", at.len());
        assert!(at.iter().all(|&s| (3150..=3300).contains(&s)), "{at:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn renews_ahead_of_expiry_for_days() {
        let (clock, source) = setup(Duration::from_secs(3600), &[]);
        let (creds, task) =
            RenewingCredentials::start(source.clone(), config(300), clock.clone(), "role".into())
                .await
                .unwrap();
        // Three days of hourly sessions: every request in between finds valid
        // credentials without waiting.
        for _ in 0..(3 * 24 * 12) {
            tokio::time::sleep(Duration::from_secs(300)).await;
            let current = creds.current().expect("never expired");
            assert!(current.expiry().unwrap() > clock.now());
        }
        // A renewal every 3300 s (3600 s sessions renewed 300 s early).
        assert_eq!(creds.renewals(), 3 * 24 * 3600 / 3300);
        let fetches = source.fetches.lock().clone();
        for pair in fetches.windows(2) {
            let gap = pair[1].duration_since(pair[0]).unwrap();
            assert_eq!(
                gap,
                Duration::from_secs(3300),
                "renewed 300 s before expiry"
            );
        }
        // The report says when the next one comes: 300 s before expiry.
        let status = creds.status();
        assert_eq!(
            status.next_renewal.unwrap(),
            status.expires.unwrap() - Duration::from_secs(300)
        );
        task.abort();
    }

    /// Spread, the renewals of one volume still come before `renew_before` is
    /// left, and no sooner than half of it more.
    #[tokio::test(start_paused = true)]
    async fn spread_renewals_keep_within_their_window() {
        let (clock, source) = setup(Duration::from_secs(3600), &[]);
        let config = RenewConfig {
            spread: true,
            ..config(300)
        };
        let (creds, task) =
            RenewingCredentials::start(source.clone(), config, clock.clone(), "role".into())
                .await
                .unwrap();
        for _ in 0..(24 * 12) {
            tokio::time::sleep(Duration::from_secs(300)).await;
            assert!(creds.current().unwrap().expiry().unwrap() > clock.now());
        }
        let fetches = source.fetches.lock().clone();
        assert!(fetches.len() > 24, "{} renewals in a day", fetches.len());
        for pair in fetches.windows(2) {
            let gap = pair[1].duration_since(pair[0]).unwrap().as_secs();
            assert!((3150..=3300).contains(&gap), "renewed after {gap} s");
        }
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_ends_when_the_last_clone_of_the_credentials_goes() {
        let (clock, source) = setup(Duration::from_secs(3600), &[]);
        let (creds, task) =
            RenewingCredentials::start(source.clone(), config(300), clock, "role".into())
                .await
                .unwrap();
        let clone = creds.clone();
        drop(creds);
        tokio::time::sleep(Duration::from_secs(3400)).await;
        assert_eq!(clone.renewals(), 1, "renewing while a clone is held");
        drop(clone);
        let ended = tokio::time::timeout(Duration::from_secs(1), task).await;
        assert!(ended.expect("the task ended").unwrap_err().is_cancelled());
        let fetches = source.fetches.lock().len();
        tokio::time::sleep(Duration::from_secs(10 * 3600)).await;
        assert_eq!(source.fetches.lock().len(), fetches, "no renewal after");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_renewals_back_off_and_keep_the_current_credentials() {
        let (clock, source) = setup(Duration::from_secs(600), &[true, false, false, false]);
        let (creds, task) =
            RenewingCredentials::start(source.clone(), config(300), clock.clone(), "role".into())
                .await
                .unwrap();
        let first = creds.current().unwrap();
        tokio::time::sleep(Duration::from_secs(300) + Duration::from_millis(500)).await;
        // The first renewal failed; the old credentials are still served.
        assert_eq!(
            creds.current().unwrap().access_key_id(),
            first.access_key_id()
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        let fetches = source.fetches.lock().clone();
        let gaps: Vec<u64> = fetches
            .windows(2)
            .map(|p| p[1].duration_since(p[0]).unwrap().as_secs())
            .collect();
        // 300 s to the first renewal attempt, then 1 s, 2 s, 4 s of backoff.
        assert_eq!(gaps, [300, 1, 2, 4]);
        assert_ne!(
            creds.current().unwrap().access_key_id(),
            first.access_key_id()
        );
        assert_eq!(creds.renewals(), 1);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_never_answers_times_out_and_is_retried() {
        let (clock, source) = setup(Duration::from_secs(3600), &[]);
        *source.hangs.lock() = 2;
        let (creds, task) =
            RenewingCredentials::start(source.clone(), config(300), clock.clone(), "role".into())
                .await
                .unwrap();
        // Renewal is due at 3300 s; two fetches hang for 30 s each, with 1 s and
        // 2 s of backoff after them, and the third answers.
        tokio::time::sleep(Duration::from_secs(3300 + 30 + 1 + 30 + 2 + 1)).await;
        assert_eq!(creds.renewals(), 1);
        let fetches = source.fetches.lock().clone();
        let gaps: Vec<u64> = fetches
            .windows(2)
            .map(|p| p[1].duration_since(p[0]).unwrap().as_secs())
            .collect();
        assert_eq!(gaps, [3300, 31, 32]);
        assert!(creds.current().is_ok());
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn expired_credentials_fail_with_the_reason_then_recover() {
        // Renewals fail for longer than the credentials live.
        let mut script = vec![true];
        script.extend(std::iter::repeat_n(false, 12));
        let (clock, source) = setup(Duration::from_secs(60), &script);
        let (creds, task) =
            RenewingCredentials::start(source.clone(), config(30), clock.clone(), "my-role".into())
                .await
                .unwrap();
        tokio::time::sleep(Duration::from_secs(61)).await;
        let err = creds.current().unwrap_err();
        let text = format!(
            "{}",
            aws_smithy_types::error::display::DisplayErrorContext(&err)
        );
        assert!(text.contains("my-role"), "{text}");
        assert!(text.contains("STS unreachable (scripted)"), "{text}");
        // Backoff is capped at 60 s; once the script runs out, renewal succeeds.
        tokio::time::sleep(Duration::from_secs(15 * 60)).await;
        assert!(creds.current().is_ok());
        assert!(creds.renewals() >= 1);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn requests_refused_together_share_one_forced_renewal() {
        let (clock, source) = setup(Duration::from_secs(3600), &[]);
        let (creds, task) =
            RenewingCredentials::start(source.clone(), config(300), clock.clone(), "role".into())
                .await
                .unwrap();
        let seen = creds.renewals();
        let (a, b) = tokio::join!(
            creds.renew_since(seen, "refused (test)"),
            creds.renew_since(seen, "refused (test)")
        );
        a.unwrap();
        b.unwrap();
        // The first fetch at start, then exactly one forced renewal.
        assert_eq!(source.fetches.lock().len(), 2);
        assert_eq!(creds.renewals(), seen + 1);
        // A request signed before that renewal is simply retried.
        creds
            .renew_since(seen, "late refusal (test)")
            .await
            .unwrap();
        assert_eq!(source.fetches.lock().len(), 2);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_forced_renewal_moves_the_schedule() {
        let (clock, source) = setup(Duration::from_secs(600), &[]);
        let (creds, task) =
            RenewingCredentials::start(source.clone(), config(300), clock.clone(), "role".into())
                .await
                .unwrap();
        tokio::time::sleep(Duration::from_secs(100)).await;
        creds
            .renew_since(creds.renewals(), "refused (test)")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(400)).await;
        let fetches = source.fetches.lock().clone();
        let at: Vec<u64> = fetches
            .iter()
            .map(|t| t.duration_since(fetches[0]).unwrap().as_secs())
            .collect();
        // Start, forced at 100 s, then 300 s before the new session's end (700 s).
        assert_eq!(at, [0, 100, 400]);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn static_credentials_are_never_renewed() {
        struct Static;
        #[async_trait]
        impl CredentialSource for Static {
            async fn fetch(&self) -> Result<Credentials, FetchError> {
                Ok(Credentials::new("AKIA", "secret", None, None, "static"))
            }
        }
        let (creds, task) = RenewingCredentials::start(
            Arc::new(Static),
            config(300),
            Arc::new(SystemClock),
            "static".into(),
        )
        .await
        .unwrap();
        task.await.unwrap();
        assert!(creds.current().is_ok());
        assert_eq!(creds.renewals(), 0);
    }
}
