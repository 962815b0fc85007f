//! A fixed pool of worker threads shared by all connections.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

/// A unit of work; it must report its own outcome (it runs on any worker).
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// Worker threads fed by one channel.
///
/// The queue itself is unbounded, but every job holds a slot of its
/// connection's [`crate::limiter::Limiter`], and a connection ends (freeing its
/// place under the connection cap) only once none of its jobs is left
/// ([`crate::limiter::Limiter::wait_jobs`]), so the total is bounded by
/// connections × in-flight cap.
#[derive(Debug)]
pub(crate) struct Pool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    pub(crate) fn new(workers: usize) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers.max(1) {
            let rx: Receiver<Job> = rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("nbd-worker-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        // A panicking export must not take the worker down; the
                        // job's own guard reports the failure to its connection.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                });
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    drop(tx);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Pool {
            tx: Some(tx),
            threads,
        })
    }

    /// A handle connections use to submit jobs.
    pub(crate) fn sender(&self) -> Option<Sender<Job>> {
        self.tx.clone()
    }

    /// Stop accepting jobs and wait for the workers (all senders must be gone).
    pub(crate) fn join(mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
