//! The consumer side of the `events` ring buffer (docs/datapath.md, "Events").
//!
//! # Polling with tokio
//!
//! [`EventReader::read`] never blocks; the ring buffer's fd becomes readable when records
//! are waiting, so the agent wraps the reader in `tokio::io::unix::AsyncFd` and drains it
//! on every readiness:
//!
//! ```ignore
//! use tokio::io::{unix::AsyncFd, Interest};
//!
//! let mut fd = AsyncFd::with_interest(datapath.take_event_reader()?, Interest::READABLE)?;
//! loop {
//!     let mut guard = fd.readable_mut().await?;
//!     while let Some(event) = guard.get_inner_mut().read() {
//!         handle(event);
//!     }
//!     // Only after the buffer was seen empty: the next wakeup is for new records.
//!     guard.clear_ready();
//! }
//! ```
//!
//! The datapath wakes the reader adaptively (when it has caught up), so a busy reader is
//! not interrupted per record. Records the reader does not drain in time are lost in the
//! datapath and counted as `events-ringbuf-full`; the per-CPU rate limit counts
//! `events-rate-limited`. Neither ever delays a packet.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    path::Path,
    time::Duration,
};

use aya::maps::{Map, MapData, RingBuf};

use crate::{abi::FlowEvent, error::DatapathError, maps::EVENTS};

/// Reads decoded [`FlowEvent`]s from the `events` ring buffer. One reader per ring buffer
/// at a time: the consumer position lives in the map, so two readers would steal each
/// other's records.
pub struct EventReader {
    ring: RingBuf<MapData>,
    undecodable: u64,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader")
            .field("fd", &self.as_raw_fd())
            .field("undecodable", &self.undecodable)
            .finish()
    }
}

impl EventReader {
    pub(crate) fn from_map(map: Map) -> Result<Self, DatapathError> {
        let ring = RingBuf::try_from(map).map_err(|e| DatapathError::Events {
            what: format!("could not be mapped: {e}"),
        })?;
        Ok(Self {
            ring,
            undecodable: 0,
        })
    }

    /// Opens the ring buffer pinned in `pin_dir` (for a process other than the agent, such
    /// as a CLI monitor, while the agent does not read it).
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let path = pin_dir.join(EVENTS);
        let data = MapData::from_pin(&path).map_err(|e| DatapathError::Events {
            what: format!(
                "pin {} could not be opened ({e}); is the datapath loaded with this pin dir?",
                path.display()
            ),
        })?;
        Self::from_map(Map::RingBuf(data))
    }

    /// The next event, None when the buffer is empty. Never blocks. Records that do not
    /// decode (a newer datapath's kinds) are skipped and counted in
    /// [`EventReader::undecodable`].
    pub fn read(&mut self) -> Option<FlowEvent> {
        loop {
            let item = self.ring.next()?;
            match FlowEvent::decode(&item) {
                Some(ev) => return Some(ev),
                None => self.undecodable += 1,
            }
        }
    }

    /// Every event waiting now.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        std::iter::from_fn(|| self.read()).collect()
    }

    /// Blocks until events are waiting or `timeout` passes; true when readable. For
    /// threads and tests; async code uses `AsyncFd` (see the module docs).
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: pfd is a valid pollfd and we pass a count of 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n > 0 && pfd.revents & libc::POLLIN != 0)
    }

    /// Records skipped because they did not decode.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }
}

impl AsFd for EventReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

// The agent moves the reader into its event task.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<EventReader>();
};
