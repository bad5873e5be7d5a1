//! Retry by failure class.
//!
//! Transient target failures (timeouts, refused connections, 503s,
//! deadlocks, serialization failures) are retried with exponential backoff
//! and full jitter, up to a number of attempts and a total time; conflicts a
//! few times; permanent failures never (they go to the error report); plugin
//! faults fail the job and local I/O faults stop it for recovery, so neither
//! is retried here.
//!
//! Defaults can be overridden per job with `--retry CLASS=ATTEMPTS[/MAX_DELAY]`,
//! e.g. `--retry transient=10/30s --retry conflict=1`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sink::{FailureClass, SinkError};

/// How one class of failure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassPolicy {
    /// Attempts in all, the first included (1 = never retried).
    pub attempts: u32,
    /// Longest wait between two attempts.
    pub max_delay: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub max_total: Duration,
}

/// Retry policy of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// First delay; it doubles each attempt (before jitter).
    pub base: Duration,
    /// Default: 6 attempts, delays up to 10 s, 2 minutes in all: rides out a
    /// target restart or a short network blip.
    pub transient: ClassPolicy,
    /// Default: 3 attempts, delays up to 1 s: a concurrent writer usually
    /// finishes quickly; a persistent conflict is reported.
    pub conflict: ClassPolicy,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(200),
            transient: ClassPolicy {
                attempts: 6,
                max_delay: Duration::from_secs(10),
                max_total: Duration::from_secs(120),
            },
            conflict: ClassPolicy {
                attempts: 3,
                max_delay: Duration::from_secs(1),
                max_total: Duration::from_secs(30),
            },
        }
    }
}

/// A `--retry` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --retry {spec:?}: {why}; write CLASS=ATTEMPTS[/MAX_DELAY] with CLASS transient or conflict, e.g. transient=8/30s"
)]
pub struct BadRetry {
    pub spec: String,
    pub why: String,
}

impl RetryPolicy {
    /// The policy of `class`, or `None` if it is never retried.
    pub fn class(&self, class: FailureClass) -> Option<&ClassPolicy> {
        match class {
            FailureClass::Transient => Some(&self.transient),
            FailureClass::Conflict => Some(&self.conflict),
            _ => None,
        }
    }

    /// Whether a failure of `class` at `attempt` (1-based), `elapsed` after
    /// the first attempt, is worth another try.
    pub fn should_retry(&self, class: FailureClass, attempt: u32, elapsed: Duration) -> bool {
        self.class(class)
            .is_some_and(|p| attempt < p.attempts && elapsed < p.max_total)
    }

    /// How long to wait after failed attempt `attempt` (1-based): a random
    /// delay up to `base * 2^(attempt-1)`, capped by the class's max delay,
    /// never below half of that ceiling.
    pub fn delay(&self, class: FailureClass, attempt: u32) -> Duration {
        let max = self.class(class).map_or(Duration::ZERO, |p| p.max_delay);
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(max);
        ceiling.mul_f64(0.5 + jitter() / 2.0)
    }

    /// Apply an override `CLASS=ATTEMPTS[/MAX_DELAY]`.
    pub fn apply_override(&mut self, spec: &str) -> Result<(), BadRetry> {
        let bad = |why: &str| BadRetry {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        let (class, rest) = spec.split_once('=').ok_or_else(|| bad("missing '='"))?;
        let policy = match FailureClass::parse(class.trim()) {
            Some(FailureClass::Transient) => &mut self.transient,
            Some(FailureClass::Conflict) => &mut self.conflict,
            Some(c) => return Err(bad(&format!("{c} failures are never retried"))),
            None => return Err(bad("unknown class")),
        };
        let (attempts, delay) = match rest.split_once('/') {
            Some((a, d)) => (a, Some(d)),
            None => (rest, None),
        };
        policy.attempts = attempts
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad("ATTEMPTS must be a whole number of at least 1"))?;
        if let Some(d) = delay {
            policy.max_delay = parse_duration(d.trim())
                .ok_or_else(|| bad("MAX_DELAY must look like 500ms, 30s or 2m"))?;
            policy.max_total = policy.max_total.max(policy.max_delay * policy.attempts);
        }
        Ok(())
    }

    /// Call the target until `call` succeeds, fails in a way not worth
    /// retrying, or its class's attempts or time are spent: for whole-call
    /// operations (an undo page, reconciliation) that have no per-record
    /// outcomes to retry one by one. `what` names the call in the log.
    pub async fn run<T, Fut>(
        &self,
        what: &str,
        mut call: impl FnMut() -> Fut,
    ) -> Result<T, SinkError>
    where
        Fut: std::future::Future<Output = Result<T, SinkError>>,
    {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match call().await {
                Err(e) if self.should_retry(e.class(), attempt, started.elapsed()) => {
                    tracing::warn!(attempt, "{what} failed ({e}); retrying");
                    tokio::time::sleep(self.delay(e.class(), attempt)).await;
                }
                result => return result,
            }
        }
    }

    /// This policy with `overrides` applied in order.
    pub fn with_overrides(mut self, overrides: &[String]) -> Result<Self, BadRetry> {
        for o in overrides {
            self.apply_override(o)?;
        }
        Ok(self)
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

/// A number in [0, 1) that differs between calls and processes: enough to
/// spread the retries of many jobs, no RNG dependency needed.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_are_capped() {
        let p = RetryPolicy::default();
        for attempt in 1..12 {
            let d = p.delay(FailureClass::Transient, attempt);
            let ceiling = (p.base * (1 << (attempt - 1))).min(p.transient.max_delay);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
        assert_eq!(p.delay(FailureClass::Permanent, 1), Duration::ZERO);
    }

    #[test]
    fn classes_retry_as_documented() {
        let p = RetryPolicy::default();
        assert!(p.should_retry(FailureClass::Transient, 5, Duration::ZERO));
        assert!(!p.should_retry(FailureClass::Transient, 6, Duration::ZERO));
        assert!(!p.should_retry(FailureClass::Transient, 1, Duration::from_secs(121)));
        assert!(p.should_retry(FailureClass::Conflict, 2, Duration::ZERO));
        assert!(!p.should_retry(FailureClass::Permanent, 1, Duration::ZERO));
        assert!(!p.should_retry(FailureClass::LocalIo, 1, Duration::ZERO));
    }

    #[test]
    fn run_retries_by_class_until_the_budget_is_spent() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let p = RetryPolicy {
            base: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        let calls = std::cell::Cell::new(0);
        let failing = |fail_first: u32, e: fn() -> SinkError| {
            calls.set(0);
            rt.block_on(p.run("test call", || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n <= fail_first { Err(e()) } else { Ok(n) } }
            }))
        };
        let transient = || SinkError::Transient("503".into());
        assert_eq!(failing(2, transient).unwrap(), 3);
        assert!(failing(99, transient).is_err());
        assert_eq!(calls.get(), p.transient.attempts);
        assert!(failing(99, || SinkError::Permanent("no".into())).is_err());
        assert_eq!(calls.get(), 1);
        assert!(failing(99, || SinkError::Io("disk".into())).is_err());
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn overrides() {
        let p = RetryPolicy::default()
            .with_overrides(&["transient=10/30s".into(), "conflict=1".into()]);
        let p = p.unwrap();
        assert_eq!(p.transient.attempts, 10);
        assert_eq!(p.transient.max_delay, Duration::from_secs(30));
        assert_eq!(p.conflict.attempts, 1);
        for bad in [
            "permanent=3",
            "transient=0",
            "transient",
            "x=1",
            "transient=2/5h",
        ] {
            let e = RetryPolicy::default()
                .with_overrides(&[bad.into()])
                .unwrap_err();
            assert!(e.to_string().contains("CLASS=ATTEMPTS"), "{e}");
        }
    }
}
