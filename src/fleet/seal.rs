//! Message signatures, when the fleet shares a secret
//! ([`FleetBuilder::secret`](super::FleetBuilder::secret)): each payload
//! ends with a newline and a tag, in 64 lowercase hex digits: the
//! HMAC-SHA256 of the channel's length (8 bytes, big-endian), the channel,
//! and the bytes before the newline.
//!
//! ```text
//! {"swr":1,"from":"6f1c0e2a9b3d4c5e","op":"c"}\n<64 hex digits>
//! ```
//!
//! The channel is signed too, so a fleet that uses one secret on several
//! channels cannot have a message of one replayed on another; its length
//! comes first so that no two channel and message pairs sign the same
//! bytes.
//!
//! The receiver checks the tag (in constant time) before it parses
//! anything. A replica without the secret reads a signed payload as one
//! that is not JSON, and one with it refuses an unsigned payload, so a
//! fleet's replicas all sign or none does.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The tag's length: a newline and 32 bytes in hex.
pub(crate) const TAG: usize = 1 + 64;

/// The fleet's key on one channel: signs what this replica sends there,
/// checks what it receives.
#[derive(Clone)]
pub(crate) struct Seal {
    /// Keyed, and fed the channel, once; cloned per message (a copy of the
    /// hash state).
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
    pub(crate) fn new(secret: &[u8], channel: &str) -> Self {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(&(channel.len() as u64).to_be_bytes());
        mac.update(channel.as_bytes());
        Self { mac }
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
        Seal::new(secret, "prompts").sign(&mut payload);
        payload
    }

    #[test]
    fn a_signed_message_opens_with_the_same_key() {
        let payload = signed(b"fleet key");
        assert_eq!(payload.len(), MESSAGE.len() + TAG);
        assert_eq!(
            Seal::new(b"fleet key", "prompts").open(&payload),
            Ok(MESSAGE)
        );
    }

    #[test]
    fn the_tag_is_hmac_sha256_of_the_channel_and_message_in_hex() {
        // The framing as documented: the channel's length, the channel
        // ("what"), the message (" do ya want for nothing?").
        let data = b"what do ya want for nothing?";
        let mut keyed = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        keyed.update(&4u64.to_be_bytes());
        keyed.update(data);
        let expected: String = keyed
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut payload = data[4..].to_vec();
        Seal::new(b"Jefe", "what").sign(&mut payload);
        let tag = std::str::from_utf8(&payload[payload.len() - 64..]).unwrap();
        assert_eq!(tag, expected);
    }

    /// Only the message was signed: one a replica signed on one channel
    /// was accepted on any other the fleet's secret is used on.
    #[test]
    fn a_message_signed_for_another_channel_is_refused() {
        let seal = Seal::new(b"fleet key", "other");
        assert_eq!(
            seal.open(&signed(b"fleet key")),
            Err(Unsealed::BadSignature)
        );
    }

    #[test]
    fn another_key_an_unsigned_or_a_changed_message_is_refused() {
        let seal = Seal::new(b"fleet key", "prompts");
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
