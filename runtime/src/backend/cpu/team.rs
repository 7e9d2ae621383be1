//! A fork-join team for the matmuls: the calling thread plus `threads - 1` helpers that spin
//! between jobs.
//!
//! A decode step runs ~5 parallel matmuls per layer, 0.05-0.2 ms each. Through rayon each one
//! is injected from the (non-pool) calling thread, which then sleeps while pool workers are
//! woken: two futex round trips per matmul, and the caller's core idles. Here the caller works
//! as participant 0 and the helpers see the next job by polling a counter, so a fork-join is a
//! few cache-line transfers. Helpers park on a condvar after [`SPIN`] idle polls (a few ms), so
//! an idle model costs no CPU.
//!
//! On a loaded machine a helper may not be running when a job arrives. Work is handed out
//! per unit (an atomic counter), so the caller then does it all; and a helper must *enter* a
//! job before the caller closes it (`state`), so the caller never waits for a helper that
//! has not started. It waits only for helpers inside the job, and yields while it does.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Idle polls before a helper parks.
const SPIN: u32 = 1 << 14;
/// Polls before a waiting thread starts yielding its core.
const YIELD_AFTER: u32 = 1 << 10;
/// Bit of `state`: the job takes no more helpers.
const CLOSED: u64 = 1 << 31;

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Incremented once per job; a helper runs the job when it sees a new value.
    epoch: AtomicU64,
    /// The current job; written by the caller before `epoch` moves, read by helpers after.
    job: UnsafeCell<Option<Job>>,
    /// `epoch << 32 | CLOSED | helpers that entered the job`.
    state: AtomicU64,
    /// Helpers done with the current job.
    done: AtomicUsize,
    panicked: AtomicBool,
    quit: AtomicBool,
    /// Parked helpers, and the lock/condvar they park on.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller while no helper reads it (between jobs: all
// helpers have counted themselves done) and read only after the epoch Release/Acquire pair.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// One job at a time (the backend is `Sync`; two threads could call it at once).
    busy: Mutex<()>,
}

impl Team {
    /// A team of `threads` participants (the caller and `threads - 1` helpers).
    pub fn new(threads: usize) -> Team {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            state: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let helpers = (1..threads.max(1))
            .map(|i| {
                let sh = shared.clone();
                std::thread::Builder::new()
                    .name(format!("mixq-cpu-{i}"))
                    .spawn(move || helper(&sh, i))
                    .expect("spawn a CPU helper thread")
            })
            .collect();
        Team {
            shared,
            helpers,
            busy: Mutex::new(()),
        }
    }

    /// Participants: the caller and the helpers.
    pub fn size(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `f(i)` for every participant `i` (the caller is 0, helpers 1..) and returns
    /// when all are done. A panic in a helper is re-raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.helpers.is_empty() {
            return f(0);
        }
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let sh = &*self.shared;
        // SAFETY: the lifetime is erased for the helpers; they finish with `f` before this
        // function returns (we wait for `done` below, on unwind too).
        let job: Job = unsafe { std::mem::transmute::<_, Job>(f as *const (dyn Fn(usize) + Sync)) };
        unsafe { *sh.job.get() = Some(job) };
        sh.done.store(0, Relaxed);
        let epoch = sh.epoch.load(Relaxed) + 1;
        sh.state.store(epoch << 32, SeqCst);
        sh.epoch.store(epoch, SeqCst);
        if sh.sleepers.load(SeqCst) > 0 {
            let _g = sh.lock.lock().unwrap();
            sh.wake.notify_all();
        }
        /// Closes the job and waits for the helpers inside it (on unwind too).
        struct Close<'a>(&'a Shared);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                let entered = (self.0.state.fetch_or(CLOSED, SeqCst) & (CLOSED - 1)) as usize;
                let mut spins = 0u32;
                while self.0.done.load(Acquire) < entered {
                    spins += 1;
                    if spins < YIELD_AFTER {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
        {
            let _close = Close(sh);
            f(0);
        }
        if sh.panicked.swap(false, Relaxed) {
            panic!("a CPU helper thread panicked");
        }
    }
}

fn helper(sh: &Shared, idx: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            let e = sh.epoch.load(Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if sh.quit.load(Relaxed) {
                return;
            }
            spins += 1;
            if spins < SPIN {
                if spins < YIELD_AFTER {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            let g = sh.lock.lock().unwrap();
            sh.sleepers.fetch_add(1, SeqCst);
            let g = if sh.epoch.load(SeqCst) == seen && !sh.quit.load(SeqCst) {
                sh.wake.wait(g).unwrap()
            } else {
                g
            };
            sh.sleepers.fetch_sub(1, SeqCst);
            drop(g);
            spins = 0;
        }
        // Enter the job unless the caller closed it (it then did our share) or moved on.
        let mut st = sh.state.load(SeqCst);
        let entered = loop {
            if st >> 32 != seen || st & CLOSED != 0 {
                break false;
            }
            match sh.state.compare_exchange_weak(st, st + 1, SeqCst, SeqCst) {
                Ok(_) => break true,
                Err(now) => st = now,
            }
        };
        if !entered {
            continue;
        }
        // SAFETY: the caller set `job` before moving the epoch we just acquired, and keeps
        // the closure alive until we, having entered, count ourselves done.
        let job = unsafe { (*sh.job.get()).expect("a job with the epoch") };
        if catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(idx) })).is_err() {
            sh.panicked.store(true, Relaxed);
        }
        sh.done.fetch_add(1, Release);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.quit.store(true, SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap();
            self.shared.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// `f(unit)` for `0..units`, handed out one at a time to the team's participants.
pub fn for_each_unit<S>(
    team: &Team,
    units: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize) + Sync,
) {
    let next = AtomicUsize::new(0);
    team.run(&|_| {
        let mut i = next.fetch_add(1, Relaxed);
        if i >= units {
            return;
        }
        let mut s = init();
        while i < units {
            f(&mut s, i);
            i = next.fetch_add(1, Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unit runs exactly once, over many back-to-back jobs (the helpers alternate
    /// between spinning and entering), for 1 to 3 participants; idle helpers park and wake.
    #[test]
    fn every_unit_once() {
        for threads in 1..=3 {
            let team = Team::new(threads);
            for job in 0..2000 {
                let units = job % 37;
                let hits: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
                for_each_unit(
                    &team,
                    units,
                    || (),
                    |_, u| {
                        hits[u].fetch_add(1, Relaxed);
                    },
                );
                assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "job {job}");
                if job == 1000 {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                }
            }
        }
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let team = Team::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            for_each_unit(
                &team,
                64,
                || (),
                |_, u| {
                    assert!(u != 40, "unit 40");
                    std::thread::sleep(std::time::Duration::from_micros(50));
                },
            )
        }));
        assert!(r.is_err());
        // the team still works afterwards
        let n = AtomicUsize::new(0);
        for_each_unit(
            &team,
            10,
            || (),
            |_, _| {
                n.fetch_add(1, Relaxed);
            },
        );
        assert_eq!(n.load(Relaxed), 10);
    }
}
