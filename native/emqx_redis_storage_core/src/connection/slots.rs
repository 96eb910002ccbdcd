//! Redis Cluster hash slots: which of the 16384 slots a key lives in. A
//! fact of Redis, used by the cluster backend to send each command to the
//! master of its key's slot, and by the key layout to place its keys.

/// Redis Cluster has 16384 hash slots.
pub const SLOTS: u16 = 16384;

/// CRC16-CCITT (XMODEM), the hash of Redis Cluster key slots.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Redis Cluster slot of any key.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS
}

/// The hash tag Redis takes from a key: the bytes between the first `{` and
/// the first `}` after it, if not empty; else the whole key.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_redis_cluster_specification() {
        // The check value given in the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        // Known slots (CLUSTER KEYSLOT).
        assert_eq!(crc16(b"foo") % SLOTS, 12182);
        assert_eq!(crc16(b"user1000") % SLOTS, 3443);
    }
}
