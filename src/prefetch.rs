//! Asking the CPU for memory ahead of its use.
//!
//! A batch to 10,000 users writes each message into its user's replay ring,
//! ~43 MB of rings that no cache holds: the ring's oldest entry and the frame
//! it drops were last touched a full round of users before. Asked for a few
//! messages ahead, they arrive while the messages before them are made
//! (`loadtest/scenarios/interleave.py`: 5–7 % less CPU a batch message to
//! nobody, though ~290 instructions more). A prefetch is a hint: it never
//! faults and changes nothing but the caches, so any address, even a wrong
//! one, is safe to give.

/// Brings the cache line holding `at` into the cache, for writing.
#[inline]
pub fn line<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHW is a hint: it reads nothing into the program and
    // never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
        _mm_prefetch::<_MM_HINT_ET0>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Brings every cache line of `[start, start + len)` into the cache, for writing.
#[inline]
pub fn lines(start: *const u8, len: usize) {
    const LINE: usize = 64;
    let end = (start as usize).saturating_add(len);
    let mut at = start as usize & !(LINE - 1);
    while at < end {
        line(at as *const u8);
        let Some(next) = at.checked_add(LINE) else { return };
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_address_is_a_safe_hint() {
        let bytes = [7u8; 200];
        lines(bytes.as_ptr(), bytes.len());
        lines(std::ptr::null(), 4096);
        lines(usize::MAX as *const u8, 64);
        line(bytes.as_ptr().wrapping_sub(1 << 40));
        assert_eq!(bytes, [7u8; 200], "nothing but the caches changes");
    }
}
