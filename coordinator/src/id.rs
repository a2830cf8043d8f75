//! Generated global transaction ids: 26 characters of Crockford base32, a 48-bit millisecond
//! timestamp followed by 80 random bits (the ULID layout). They sort by creation time, which
//! keeps `global_tx` inserts near the end of its primary-key index, and they fit the gid
//! rules of [`crate::validate`].

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new sortable unique gid.
pub fn new_gid() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let random: u128 = rand::rng().random::<u128>() & ((1u128 << 80) - 1);
    let value = ((millis & ((1u128 << 48) - 1)) << 80) | random;
    (0..26)
        .rev()
        .map(|i| ALPHABET[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_unique_and_time_ordered() {
        let a = new_gid();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_gid();
        assert_eq!(a.len(), 26);
        assert!(crate::validate::gid(&a).is_ok());
        assert_ne!(a, b);
        assert!(a < b, "{a} should sort before {b}");
    }
}
