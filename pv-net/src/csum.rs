//! The Internet checksum (RFC 1071) for transmit checksum offload done in
//! software when the device cannot.

/// Ones'-complement sum of `data` as big-endian 16-bit words (an odd last
/// byte is padded with zero), folded to 16 bits, not complemented.
pub fn ones_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// Complete a partial checksum the way a device with `NEEDS_CSUM` would:
/// the field at `start + offset` holds the pseudo-header sum, and the
/// checksum covers `frame[start..]`. Returns false (frame untouched) when
/// the field does not lie inside the frame.
pub fn complete(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(field) = start.checked_add(offset) else {
        return false;
    };
    if field.checked_add(2).is_none_or(|e| e > frame.len()) || start >= frame.len() {
        return false;
    }
    let c = !ones_sum(&frame[start..]);
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2.
        assert_eq!(ones_sum(&[0, 1, 0xf2, 3, 0xf4, 0xf5, 0xf6, 0xf7]), 0xddf2);
        assert_eq!(ones_sum(&[0xff]), 0xff00);
    }

    #[test]
    fn complete_then_verify() {
        let mut f = [0u8; 40];
        for (i, b) in f.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7);
        }
        f[20..22].copy_from_slice(&[0x12, 0x34]);
        assert!(complete(&mut f, 10, 10));
        // A receiver's check: the sum over the range plus the pseudo-header
        // sum (0x1234 here) is all ones.
        let s = u32::from(ones_sum(&f[10..])) + 0x1234;
        let s = (s & 0xFFFF) + (s >> 16);
        assert_eq!(s, 0xFFFF);
        assert!(!complete(&mut f, 39, 1));
        assert!(!complete(&mut f, usize::MAX, 1));
    }
}
