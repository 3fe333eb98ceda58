//! Message signatures, when the fleet shares a secret
//! ([`FleetBuilder::secret`](super::FleetBuilder::secret)): each payload
//! ends with a newline and the HMAC-SHA256 of the bytes before it, in 64
//! lowercase hex digits.
//!
//! ```text
//! {"swr":1,"from":"6f1c0e2a9b3d4c5e","op":"c"}\n<64 hex digits>
//! ```
//!
//! The receiver checks the tag (in constant time) before it parses
//! anything. A replica without the secret reads a signed payload as one
//! that is not JSON, and one with it refuses an unsigned payload, so a
//! fleet's replicas all sign or none does.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The tag's length: a newline and 32 bytes in hex.
pub(crate) const TAG: usize = 1 + 64;

/// The fleet's key: signs what this replica sends, checks what it receives.
#[derive(Clone)]
pub(crate) struct Seal {
    /// Keyed once; cloned per message (a copy of the hash state).
    mac: Hmac<Sha256>,
}

/// Why a payload's signature is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unsealed {
    /// No tag where one belongs (an unsigned message).
    Unsigned,
    /// A tag that is not this fleet's key's for these bytes.
    BadSignature,
}

impl Seal {
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self {
            // HMAC takes a key of any length.
            mac: Hmac::new_from_slice(secret).expect("HMAC takes any key length"),
        }
    }

    /// Appends the tag of `message` to it.
    pub(crate) fn sign(&self, message: &mut Vec<u8>) {
        let mut mac = self.mac.clone();
        mac.update(message);
        let tag = mac.finalize().into_bytes();
        message.reserve(TAG);
        message.push(b'\n');
        for byte in tag {
            message.push(HEX[usize::from(byte >> 4)]);
            message.push(HEX[usize::from(byte & 0xf)]);
        }
    }

    /// The message of a signed `payload`, if its tag is this key's.
    pub(crate) fn open<'a>(&self, payload: &'a [u8]) -> Result<&'a [u8], Unsealed> {
        let Some(split) = payload.len().checked_sub(TAG) else {
            return Err(Unsealed::Unsigned);
        };
        let (message, tag) = payload.split_at(split);
        let [b'\n', hex @ ..] = tag else {
            return Err(Unsealed::Unsigned);
        };
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            let (Some(high), Some(low)) = (nibble(pair[0]), nibble(pair[1])) else {
                return Err(Unsealed::Unsigned);
            };
            *byte = high << 4 | low;
        }
        let mut mac = self.mac.clone();
        mac.update(message);
        mac.verify_slice(&bytes)
            .map(|()| message)
            .map_err(|_| Unsealed::BadSignature)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = br#"{"swr":1,"from":"0000000000000001","op":"c"}"#;

    fn signed(secret: &[u8]) -> Vec<u8> {
        let mut payload = MESSAGE.to_vec();
        Seal::new(secret).sign(&mut payload);
        payload
    }

    #[test]
    fn a_signed_message_opens_with_the_same_key() {
        let payload = signed(b"fleet key");
        assert_eq!(payload.len(), MESSAGE.len() + TAG);
        assert_eq!(Seal::new(b"fleet key").open(&payload), Ok(MESSAGE));
    }

    #[test]
    fn the_tag_is_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        let mut payload = b"what do ya want for nothing?".to_vec();
        Seal::new(b"Jefe").sign(&mut payload);
        let tag = std::str::from_utf8(&payload[payload.len() - 64..]).unwrap();
        assert_eq!(
            tag,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn another_key_an_unsigned_or_a_changed_message_is_refused() {
        let seal = Seal::new(b"fleet key");
        assert_eq!(
            seal.open(&signed(b"other key")),
            Err(Unsealed::BadSignature)
        );
        assert_eq!(seal.open(MESSAGE), Err(Unsealed::Unsigned));
        assert_eq!(seal.open(b""), Err(Unsealed::Unsigned));
        let mut changed = signed(b"fleet key");
        changed[5] ^= 1;
        assert_eq!(seal.open(&changed), Err(Unsealed::BadSignature));
        let mut upper = signed(b"fleet key");
        let last = upper.len() - 1;
        upper[last] = b'G';
        assert_eq!(seal.open(&upper), Err(Unsealed::Unsigned));
    }
}
