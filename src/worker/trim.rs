//! Giving the memory a burst of messages freed back to the system.
//!
//! Every message the worker takes allocates and frees a few dozen small blocks (its decoded
//! form, its pipeline task, the broker's frames) between the long-lived ones of the messages
//! it holds. glibc's malloc keeps what is freed inside its arenas for reuse and returns only
//! the free space at the very top of each heap, so after a burst (10,000 eta messages taken
//! at once, or a million no-op tasks) the resident size stays near the burst's peak although
//! most of it is free. `malloc_trim(0)` hands every free page back (`madvise(DONTNEED)`),
//! wherever it lies in the heap; the next allocation there costs a page fault.
//!
//! [`Trimmer`] runs it on a thread of its own (it locks each arena in turn, for a
//! millisecond or so: not on a runtime thread), once a period in which messages came, and
//! once more after they stop, so that an idle worker does not trim again and again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Counts the messages the consume loop takes and trims the heap after each period that
/// had some. Dropping it stops its thread.
pub(crate) struct Trimmer {
    taken: Arc<AtomicU64>,
    /// Dropped with the trimmer: its thread's wait ends at once.
    _stop: mpsc::Sender<()>,
}

impl Trimmer {
    /// Start trimming every `period` in which a message was taken; `None` where the
    /// allocator has no trim (not glibc) or the thread cannot be started.
    pub fn start(period: Duration) -> Option<Trimmer> {
        if !supported() {
            return None;
        }
        let taken = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = mpsc::channel::<()>();
        let seen = taken.clone();
        let spawned = std::thread::Builder::new()
            .name("celeriac-trim".into())
            // It only sleeps and calls malloc_trim.
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut last = 0;
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                    let now = seen.load(Ordering::Relaxed);
                    if now != last {
                        last = now;
                        trim();
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Trimmer { taken, _stop: stop }),
            Err(err) => {
                tracing::warn!(error = %err, "could not start the heap-trimming thread");
                None
            }
        }
    }

    /// A message was taken.
    pub fn taken(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether this build's allocator can be trimmed.
fn supported() -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
}

/// Return the free pages of every malloc arena to the system.
#[allow(unsafe_code)] // the crate's one unsafe block: a plain libc call, see SAFETY
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only inspects and releases the allocator's own free memory; it
    // takes each arena's lock like malloc and free do, so it is safe beside other threads.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_anon_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Frees 16 MB in 64 kB blocks (below glibc's 128 kB mmap threshold) that lie between
    /// live ones, where free() alone returns nothing; returns the live half. (A trim can
    /// give back only the whole pages inside each free block: 15 of a 64 kB block's 16.)
    fn fragment() -> Vec<Vec<u8>> {
        let mut blocks: Vec<Vec<u8>> = (0..512).map(|_| vec![1u8; 64 * 1024]).collect();
        let kept = blocks.iter_mut().step_by(2).map(std::mem::take).collect();
        drop(blocks);
        kept
    }

    /// One test, not two: a trim in a test running beside it would give back this one's
    /// freed blocks before it measures.
    #[test]
    fn a_trim_and_the_trimmer_after_a_message_return_freed_pages() {
        if !supported() {
            return;
        }
        let kept = fragment();
        let before = rss_anon_kb();
        trim();
        let after = rss_anon_kb();
        assert!(
            after + 8 * 1024 < before,
            "malloc_trim gave back less than 8 MB of the 16 MB freed: {before} kB -> {after} kB"
        );
        drop(kept);

        let trimmer = Trimmer::start(Duration::from_millis(20)).expect("a trimming thread");
        let kept = fragment();
        let before = rss_anon_kb();
        trimmer.taken();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut after = before;
        while after + 8 * 1024 >= before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            after = rss_anon_kb();
        }
        assert!(
            after + 8 * 1024 < before,
            "the trimmer gave back less than 8 MB within 10 s of a message: {before} kB -> {after} kB"
        );
        drop(kept);
        drop(trimmer);
    }
}
