//! Single flight: concurrent requests for the same range make one origin fetch; the others
//! wait for it and share its bytes (or its error).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use crate::error::RemoteError;

/// The outcome every waiter of a flight gets.
pub type Shared = Result<Arc<Vec<u8>>, Arc<RemoteError>>;

#[derive(Default)]
struct Flight {
    done: Mutex<Option<Shared>>,
    landed: Condvar,
}

/// The fetches in progress, by `(offset, len)`.
#[derive(Default)]
pub struct Flights {
    flying: Mutex<HashMap<(u64, usize), Arc<Flight>>>,
}

impl Flights {
    /// Runs `fetch` for `key` unless a fetch for it is already in flight, in which case waits
    /// for that one's outcome instead.
    pub fn run(
        &self,
        key: (u64, usize),
        fetch: impl FnOnce() -> Result<Vec<u8>, RemoteError>,
    ) -> Shared {
        let (flight, leader) = {
            let mut flying = self.flying.lock().unwrap_or_else(|p| p.into_inner());
            match flying.get(&key) {
                Some(flight) => (Arc::clone(flight), false),
                None => {
                    let flight = Arc::new(Flight::default());
                    flying.insert(key, Arc::clone(&flight));
                    (flight, true)
                }
            }
        };
        if leader {
            // Unregisters the flight and wakes the waiters even if `fetch` panics.
            struct Land<'a>(&'a Flights, (u64, usize), &'a Flight, Option<Shared>);
            impl Drop for Land<'_> {
                fn drop(&mut self) {
                    let outcome = self.3.take().unwrap_or_else(|| {
                        Err(Arc::new(RemoteError::Setup("the fetch panicked".into())))
                    });
                    *self.2.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
                    self.0
                        .flying
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&self.1);
                    self.2.landed.notify_all();
                }
            }
            let mut land = Land(self, key, &flight, None);
            let outcome: Shared = fetch().map(Arc::new).map_err(Arc::new);
            land.3 = Some(outcome.clone());
            drop(land);
            return outcome;
        }
        let mut done = flight.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(outcome) = done.as_ref() {
                return outcome.clone();
            }
            done = flight.landed.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Barrier;

    #[test]
    fn concurrent_requests_make_one_fetch() {
        let flights = Flights::default();
        let fetches = AtomicU32::new(0);
        let started = Barrier::new(2);
        let release = Barrier::new(2);
        std::thread::scope(|scope| {
            let leader = scope.spawn(|| {
                flights.run((0, 3), || {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    started.wait();
                    release.wait();
                    Ok(b"abc".to_vec())
                })
            });
            started.wait();
            // The leader's fetch is in flight: these wait for it.
            let followers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        flights.run((0, 3), || {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            Ok(b"xyz".to_vec())
                        })
                    })
                })
                .collect();
            // Give the followers time to join the flight; correctness does not depend on it
            // (a late follower starts its own flight after the leader landed).
            while flights
                .flying
                .lock()
                .unwrap()
                .get(&(0, 3))
                .map(Arc::strong_count)
                < Some(6)
            {
                std::thread::yield_now();
            }
            release.wait();
            assert_eq!(*leader.join().unwrap().unwrap(), b"abc");
            for f in followers {
                assert_eq!(*f.join().unwrap().unwrap(), b"abc");
            }
        });
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(flights.flying.lock().unwrap().is_empty());
    }

    #[test]
    fn errors_are_shared_and_not_kept() {
        let flights = Flights::default();
        let failed = flights.run((5, 1), || Err(RemoteError::Setup("down".into())));
        assert!(failed.is_err());
        let again = flights.run((5, 1), || Ok(vec![1]));
        assert_eq!(*again.unwrap(), vec![1]);
    }
}
