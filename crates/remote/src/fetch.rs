//! Bounded retries: a range request is tried until it succeeds, fails for good, runs out of
//! attempts or of time; the time limit covers every attempt and the pauses between them.

use std::time::{Duration, Instant};

use crate::client::{Client, Failure, Pin};
use crate::error::{Cause, RemoteError};

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts at most (at least 1).
    pub attempts: u32,
    /// Time limit of one range, all attempts and pauses included.
    pub timeout: Duration,
    /// Pause after the first failed attempt; doubled after each further one, up to 2 s.
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 4,
            timeout: Duration::from_secs(30),
            backoff: Duration::from_millis(100),
        }
    }
}

/// Longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Fetches bytes `start..=end` with `retry`; the error names the URL, the range and the cause.
pub fn fetch_range(
    client: &Client,
    pin: &Pin,
    start: u64,
    end: u64,
    retry: Retry,
) -> Result<Vec<u8>, RemoteError> {
    let deadline = Instant::now() + retry.timeout;
    let mut pause = retry.backoff;
    let mut attempts = 0;
    let fail = |attempts, cause| RemoteError::Fetch {
        url: client.url().to_string(),
        start,
        end,
        attempts,
        cause,
    };
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(attempts - 1, Cause::Timeout(retry.timeout)));
        }
        let cause = match client.range(start, end, pin, left) {
            Ok(bytes) => return Ok(bytes),
            Err(Failure::Changed(what)) => {
                return Err(RemoteError::Changed {
                    url: client.url().to_string(),
                    what,
                })
            }
            Err(Failure::Attempt(Cause::Timeout(_))) => Cause::Timeout(retry.timeout),
            Err(Failure::Attempt(cause)) => cause,
        };
        if !cause.retryable() || attempts >= retry.attempts.max(1) {
            return Err(fail(attempts, cause));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left <= pause {
            return Err(fail(attempts, cause));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

/// Learns the image's length and identity, with the same retries.
pub fn probe(client: &Client, retry: Retry) -> Result<Pin, RemoteError> {
    let deadline = Instant::now() + retry.timeout;
    let mut pause = retry.backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let cause = match client.probe(left.max(Duration::from_millis(1))) {
            Ok(pin) => return Ok(pin),
            Err(Cause::Timeout(_)) => Cause::Timeout(retry.timeout),
            Err(cause) => cause,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !cause.retryable() || attempts >= retry.attempts.max(1) || left <= pause {
            return Err(RemoteError::Fetch {
                url: client.url().to_string(),
                start: 0,
                end: 0,
                attempts,
                cause,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}
