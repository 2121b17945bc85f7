//! A frame's bytes and its reference count in one allocation.
//!
//! A frame built in a `Vec` becomes a `Bytes` without a reference count; the
//! first clone (the subscriber's queue beside the replay ring) allocates one
//! apart from the bytes. A message to a connected user then costs two
//! allocations, two frees and, when its ring drops it 20 messages later, a
//! read of two cold lines. Here the frame is written into an owner whose
//! bytes sit right after the count `Bytes::from_owner` keeps, so the frame is
//! one allocation however many hold it. Owners come in size classes (16-byte
//! steps up to 256, coarser above, to [`LARGEST`]), the same rounding the
//! allocator applies to any request.

use std::mem::MaybeUninit;

use bytes::Bytes;

/// The longest frame made here; longer ones are rare enough (and their
/// bytes dominate the count's allocation) to stay in a `Vec`.
pub const LARGEST: usize = 1024;

/// Makes a frame of exactly `len` bytes (at most [`LARGEST`]), all of which
/// `write` fills, front to back, through the slice it is given (a `BufMut`).
pub fn frame(len: usize, write: impl FnOnce(&mut &mut [MaybeUninit<u8>])) -> Bytes {
    match len {
        0..=32 => sized::<32>(len, write),
        33..=48 => sized::<48>(len, write),
        49..=64 => sized::<64>(len, write),
        65..=80 => sized::<80>(len, write),
        81..=96 => sized::<96>(len, write),
        97..=112 => sized::<112>(len, write),
        113..=128 => sized::<128>(len, write),
        129..=144 => sized::<144>(len, write),
        145..=160 => sized::<160>(len, write),
        161..=176 => sized::<176>(len, write),
        177..=192 => sized::<192>(len, write),
        193..=208 => sized::<208>(len, write),
        209..=224 => sized::<224>(len, write),
        225..=240 => sized::<240>(len, write),
        241..=256 => sized::<256>(len, write),
        257..=288 => sized::<288>(len, write),
        289..=320 => sized::<320>(len, write),
        321..=384 => sized::<384>(len, write),
        385..=448 => sized::<448>(len, write),
        449..=512 => sized::<512>(len, write),
        513..=640 => sized::<640>(len, write),
        641..=768 => sized::<768>(len, write),
        769..=896 => sized::<896>(len, write),
        _ => sized::<LARGEST>(len, write),
    }
}

/// The owner of one size class: `len` bytes in use of `N`, the first `len`
/// written. The rest is left as it was: zeroing it first was a `memset` of
/// the whole class a frame (~20 instructions of a batch message).
struct Sized<const N: usize> {
    len: usize,
    bytes: [MaybeUninit<u8>; N],
}

impl<const N: usize> AsRef<[u8]> for Sized<N> {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `sized` makes an owner only once `write` has filled its
        // first `len` bytes (`len <= N`), and nothing changes them after.
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr().cast(), self.len) }
    }
}

fn sized<const N: usize>(len: usize, write: impl FnOnce(&mut &mut [MaybeUninit<u8>])) -> Bytes {
    let mut owner = Sized { len, bytes: [MaybeUninit::uninit(); N] };
    let mut out = &mut owner.bytes[..len];
    write(&mut out);
    assert!(out.is_empty(), "a frame's length was counted wrong: {} bytes unwritten", out.len());
    Bytes::from_owner(owner)
}

/// Asks for the lines of `frame`'s allocation ahead of its drop, when it
/// was made here: the allocator's size word and the owner's count before its
/// first byte (32 and 24 bytes before it: `Bytes::from_owner` keeps its count
/// ahead of `Sized`, whose length comes before the bytes), and the bytes,
/// which the next frame of its size class is written into once the
/// allocator hands the freed block out again. For any other frame the hint
/// is merely wasted ([`crate::prefetch`]).
pub fn prefetch_for_drop(frame: &Bytes) {
    if frame.len() <= LARGEST {
        crate::prefetch::lines(frame.as_ptr().wrapping_sub(32), frame.len() + 32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn every_length_up_to_the_largest_holds_exactly_what_was_written() {
        for len in 0..=LARGEST {
            let made = frame(len, |out| {
                for i in 0..len {
                    out.put_u8((i % 251) as u8);
                }
            });
            assert_eq!(made.len(), len);
            assert!(made.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "length {len}");
        }
    }

    #[test]
    fn clones_and_slices_share_the_bytes_and_outlive_the_first() {
        let made = frame(5, |out| out.put_slice(b"hello"));
        let clone = made.clone();
        let tail = made.slice(1..);
        drop(made);
        assert_eq!(&clone[..], b"hello");
        assert_eq!(&tail[..], b"ello");
        assert_eq!(clone.as_ptr().wrapping_add(1), tail.as_ptr());
    }
}
