//! Ids this service creates: 11 characters from `A-Z a-z 0-9 _ -`, drawn with a CSPRNG.
use rand::Rng;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// A fresh 11-character id. 64 symbols are drawn from 6 random bits each, so every
/// symbol is uniform (no modulo bias).
pub fn new_id() -> String {
    let mut rng = rand::rng();
    (0..11)
        .map(|_| ALPHABET[(rng.random::<u8>() & 63) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_contract_shape() {
        let a = new_id();
        assert_eq!(a.len(), 11);
        assert!(a.bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(a, new_id());
    }
}
