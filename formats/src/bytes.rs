//! Cheaply clonable, reference-counted byte ranges: a tensor borrowed from a memory map (or an
//! owned buffer) that can outlive the reader that produced it. Backends keep these instead of
//! copying weights, so a multi-gigabyte file opens without reading every page.

use memmap2::Mmap;
use std::ops::{Deref, Range};
use std::sync::Arc;

#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
    /// The owner is a memory map (whole pages of a file), not a heap buffer.
    mapped: bool,
}

struct MmapOwner(Mmap);
impl AsRef<[u8]> for MmapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl SharedBytes {
    pub fn from_vec(v: Vec<u8>) -> Self {
        let len = v.len();
        SharedBytes {
            owner: Arc::new(v),
            start: 0,
            len,
            mapped: false,
        }
    }

    /// Wraps a whole memory map; slice it with [`SharedBytes::slice`].
    pub fn from_mmap(map: Mmap) -> Self {
        let len = map.len();
        SharedBytes {
            owner: Arc::new(MmapOwner(map)),
            start: 0,
            len,
            mapped: true,
        }
    }

    /// A sub-range, relative to this one. `None` if it does not fit.
    pub fn slice(&self, range: Range<usize>) -> Option<SharedBytes> {
        if range.start > range.end || range.end > self.len {
            return None;
        }
        Some(SharedBytes {
            owner: self.owner.clone(),
            start: self.start + range.start,
            len: range.end - range.start,
            mapped: self.mapped,
        })
    }

    /// For bytes of a memory map: the whole mapping and where these bytes start in it (a GPU
    /// backend can import the mapping's pages instead of copying them). `None` for owned
    /// buffers, whose neighbouring bytes are not ours to import.
    pub fn mapping(&self) -> Option<(&[u8], usize)> {
        self.mapped.then(|| ((*self.owner).as_ref(), self.start))
    }
}

impl Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_relative_and_bounded() {
        let b = SharedBytes::from_vec((0u8..10).collect());
        let s = b.slice(2..8).unwrap();
        assert_eq!(&*s, &[2, 3, 4, 5, 6, 7]);
        assert_eq!(&*s.slice(1..3).unwrap(), &[3, 4]);
        assert!(s.slice(5..7).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let bad = s.slice(3..2);
        assert!(bad.is_none());
        assert!(s.mapping().is_none(), "a Vec is not a mapping");
    }
}
