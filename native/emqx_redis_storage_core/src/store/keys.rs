//! Every Redis key name of the project is built here.
//!
//! Layout (with the default prefix `emqx:`):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `emqx:sess:{C}` | hash | a session: `data`, `created_at`, `updated_at`, `expires_at`, `node` |
//! | `emqx:lease:{C}` | hash | the takeover lease: `owner`, `fence`; expires with the lease |
//! | `emqx:fence:{C}` | string | the last fence issued for the client |
//! | `emqx:q:{C}` | zset | queued message ids, scored by arrival sequence |
//! | `emqx:qx:{C}` | zset | queued message ids, scored by expiry time (ms) |
//! | `emqx:qm:{C}` | hash | queue counters: `seq`, `dropped` |
//! | `emqx:qb:{C}` | hash | queued message id -> 8-byte stored-at time + body |
//! | `emqx:sidx:{S}` | zset | sessions of slot S: client id scored by expiry time (ms) |
//! | `emqx:scnt:{S}` | string | the number of entries in `sidx:{S}` (kept by the session scripts) |
//! | `emqx:scount` | string | single Redis and Sentinel only: the sum of all `scnt:{S}` |
//! | `emqx:ssweep` | string | when `count_sessions` last reclaimed expired index entries (Redis ms) |
//! | `emqx:chan:{S}` | hash | client registry of slot S: client id -> node |
//! | `emqx:rt:{rN}` | hash | routes of shard N: filter -> NUL-joined dests; `"\0v"` -> version |
//! | `emqx:rtrie:{rN}` | hash | prefixes of shard N's wildcard filters -> count |
//! | `emqx:rt:events` | pub/sub channel | every route change, with shard and version |
//! | `emqx:ds:sub:{C}` | set | the client's durable filters |
//! | `emqx:ds:f:{dN}` | hash | durable filters of shard N: filter -> clients holding it; `"\0v"` -> version |
//! | `emqx:ds:h:{dN}:<filter>` | set | the clients holding a durable filter |
//! | `emqx:ds:f:events` | pub/sub channel | every durable filter added or gone, with shard and version |
//! | `emqx:ds:m:{L/K}` | stream | durable messages whose topic's first level is L, publisher shard K; an entry per `persist` call |
//! | `emqx:ds:levels` | set | the first levels that have streams |
//! | `emqx:ds:appends` | pub/sub channel | the streams appended to, with their last entry id |
//! | `emqx:lown:{S}` | hash | lease owners of slot S: client id -> owner (maintained by the lease scripts) |
//! | `emqx:nodes:{n}` | zset | members: node -> heartbeat deadline (Redis ms); kept after it passes until reaped |
//! | `emqx:nodes:inc:{n}` | hash | node -> its incarnation (a member's, or a dead one's until reaped) |
//! | `emqx:nodes:reap:{n}` | hash | node -> reap lease: `"<fence> <until ms> <owner>"` |
//! | `emqx:nodes:reaped:{n}` | hash | node -> number of finished reaps of that name |
//! | `emqx:nodes:seq:{n}` | string | the last incarnation or reap fence issued |
//! | `emqx:restore:{b}` | string | while a restore runs: the id of the backup it restores |
//! | `emqx:lim:<name>:{K}` | hash | a rate limit's token bucket for key K: `m` milli-tokens at `at` (Redis ms); expires when full again |
//!
//! `{C}` is the client id as a Redis Cluster hash tag, so all keys of one
//! client live in one slot and are changed atomically by one script. The
//! client id is escaped (`%` -> `%25`, `{` -> `%7B`, `}` -> `%7D`) so that any
//! byte string is a valid, unambiguous tag. `{S}` is a tag chosen to hash to
//! slot S: the per-slot indexes live in the same slot as the clients they
//! index, which keeps index and data atomic on a cluster as well, and spreads
//! them over all shards instead of one hot key. The membership keys share
//! the tag `{n}`: one small slot, changed atomically by the node scripts; its
//! size is the number of nodes, never of clients or routes. A limiter's
//! bucket has the limited key (a client id, a username, an address) as its
//! tag: the buckets of one client are in its slot, and keys spread over the
//! cluster. The limiter's name is escaped like a tag and comes before it, so
//! the first `{` tells name and key apart.

use std::sync::OnceLock;

use crate::connection::slots::{crc16, SLOTS};
use crate::connection::Client;

/// The key layout of a client's data: every key starts with the client's
/// configured prefix. The connection layer knows no layout; this gives the
/// domains one.
pub trait ClientKeys {
    fn keys(&self) -> Keys;
}

impl ClientKeys for Client {
    fn keys(&self) -> Keys {
        Keys::new(&self.backend().config().key_prefix)
    }
}

#[derive(Clone, Debug)]
pub struct Keys {
    prefix: Vec<u8>,
}

impl Keys {
    pub fn new(prefix: &[u8]) -> Self {
        Keys {
            prefix: prefix.to_vec(),
        }
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    fn client_key(&self, kind: &str, client_id: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + kind.len() + client_id.len() + 4);
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(kind.as_bytes());
        tagged(key, client_id)
    }

    fn slot_key(&self, kind: &str, slot: u16) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + kind.len() + 12);
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(kind.as_bytes());
        key.extend_from_slice(b":{");
        key.extend_from_slice(slot_tag(slot).as_bytes());
        key.push(b'}');
        key
    }

    pub fn session(&self, client_id: &[u8]) -> Vec<u8> {
        self.client_key("sess", client_id)
    }

    pub fn lease(&self, client_id: &[u8]) -> Vec<u8> {
        self.client_key("lease", client_id)
    }

    pub fn fence(&self, client_id: &[u8]) -> Vec<u8> {
        self.client_key("fence", client_id)
    }

    pub fn queue(&self, client_id: &[u8]) -> Vec<u8> {
        self.client_key("q", client_id)
    }

    pub fn queue_expiry(&self, client_id: &[u8]) -> Vec<u8> {
        self.client_key("qx", client_id)
    }

    pub fn queue_meta(&self, client_id: &[u8]) -> Vec<u8> {
        self.client_key("qm", client_id)
    }

    pub fn queue_bodies(&self, client_id: &[u8]) -> Vec<u8> {
        self.client_key("qb", client_id)
    }

    pub fn session_index(&self, slot: u16) -> Vec<u8> {
        self.slot_key("sidx", slot)
    }

    /// The number of entries in `session_index(slot)`.
    pub fn session_count(&self, slot: u16) -> Vec<u8> {
        self.slot_key("scnt", slot)
    }

    /// The sum of every slot's `session_count`: one key, so kept on a single
    /// Redis only (on a cluster a script may touch one slot's keys only).
    pub fn session_total(&self) -> Vec<u8> {
        self.global("scount")
    }

    /// When the session indexes were last swept of expired entries: the
    /// running deployment's state (a backup leaves it out, a restore
    /// removes it, so the first count after a restore sets the counters).
    pub fn session_sweep(&self) -> Vec<u8> {
        self.global("ssweep")
    }

    pub fn channels(&self, slot: u16) -> Vec<u8> {
        self.slot_key("chan", slot)
    }

    /// Who holds the leases of the clients of one slot, so a dead owner's
    /// leases are found slot by slot.
    pub fn lease_owners(&self, slot: u16) -> Vec<u8> {
        self.slot_key("lown", slot)
    }

    fn membership_key(&self, kind: &str) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(kind.as_bytes());
        key.extend_from_slice(b":{n}");
        key
    }

    /// The node members and their heartbeat deadlines.
    pub fn members(&self) -> Vec<u8> {
        self.membership_key("nodes")
    }

    pub fn incarnations(&self) -> Vec<u8> {
        self.membership_key("nodes:inc")
    }

    pub fn reap_leases(&self) -> Vec<u8> {
        self.membership_key("nodes:reap")
    }

    pub fn reap_counts(&self) -> Vec<u8> {
        self.membership_key("nodes:reaped")
    }

    pub fn node_sequence(&self) -> Vec<u8> {
        self.membership_key("nodes:seq")
    }

    /// While a restore runs: the id of the backup it restores (`backup.rs`).
    pub fn restore_marker(&self) -> Vec<u8> {
        self.global("restore:{b}")
    }

    /// Whether the key `name` (the prefix removed) is data that a backup
    /// takes: a key of this layout that is not the running deployment's
    /// state (leases and their owners, node membership, a restore's marker,
    /// the session sweep mark). A key of another deployment whose prefix
    /// starts with this one's (`emqx:eu:sess:{c}` under `emqx:`) is not.
    pub fn is_backed_up(name: &[u8]) -> bool {
        const TAGGED: [&[u8]; 15] = [
            b"sess", b"fence", b"q", b"qx", b"qm", b"qb", b"sidx", b"scnt", b"chan", b"rt",
            b"rtrie", b"ds:sub", b"ds:f", b"ds:h", b"ds:m",
        ];
        let tagged = |kind: &[u8]| {
            name.strip_prefix(kind)
                .is_some_and(|rest| rest.starts_with(b":{"))
        };
        // `lim:<name>:{key}`: the limiter's name is escaped, so holds no `{`
        let limiter = name.strip_prefix(b"lim:").is_some_and(|rest| {
            rest.iter()
                .position(|&b| b == b'{')
                .is_some_and(|at| at > 0 && rest[at - 1] == b':')
        });
        TAGGED.into_iter().any(tagged) || limiter || name == b"scount" || name == b"ds:levels"
    }

    /// `kind:{<table><shard>}`: the keys of one shard of a table share a tag.
    fn shard_key(&self, kind: &str, table: char, shard: u16) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(format!("{kind}:{{{table}{shard}}}").as_bytes());
        key
    }

    fn global(&self, name: &str) -> Vec<u8> {
        [&self.prefix, name.as_bytes()].concat()
    }

    /// The routes of one shard; its trie shares the hash tag.
    pub fn routes(&self, shard: u16) -> Vec<u8> {
        self.shard_key("rt", 'r', shard)
    }

    pub fn route_trie(&self, shard: u16) -> Vec<u8> {
        self.shard_key("rtrie", 'r', shard)
    }

    pub fn route_events(&self) -> Vec<u8> {
        self.global("rt:events")
    }

    pub fn ds_subscriptions(&self, client_id: &[u8]) -> Vec<u8> {
        self.client_key("ds:sub", client_id)
    }

    /// The durable filters of one shard; their holder sets share the tag.
    pub fn ds_filters(&self, shard: u16) -> Vec<u8> {
        self.shard_key("ds:f", 'd', shard)
    }

    pub fn ds_holders(&self, shard: u16, filter: &[u8]) -> Vec<u8> {
        let mut key = self.shard_key("ds:h", 'd', shard);
        key.push(b':');
        key.extend_from_slice(filter);
        key
    }

    pub fn ds_filter_events(&self) -> Vec<u8> {
        self.global("ds:f:events")
    }

    /// The stream of durable messages whose topic starts with `level`, for
    /// publisher shard `shard`. A first level holds no `/`, so the tag
    /// `{level/shard}` is unambiguous; the shards of a busy first level
    /// spread over the cluster's slots.
    pub fn ds_stream(&self, level: &[u8], shard: u16) -> Vec<u8> {
        let mut key = self.global("ds:m:{");
        escape_into(&mut key, level);
        key.extend_from_slice(format!("/{shard}}}").as_bytes());
        key
    }

    pub fn ds_levels(&self) -> Vec<u8> {
        self.global("ds:levels")
    }

    pub fn ds_appends(&self) -> Vec<u8> {
        self.global("ds:appends")
    }

    /// The token bucket of limiter `name` for `key`.
    pub fn limiter(&self, name: &[u8], key: &[u8]) -> Vec<u8> {
        let mut start = self.global("lim:");
        escape_into(&mut start, name);
        tagged(start, key)
    }
}

/// `key` followed by `:{id}`, `id` escaped: a hash tag.
fn tagged(mut key: Vec<u8>, id: &[u8]) -> Vec<u8> {
    key.extend_from_slice(b":{");
    escape_into(&mut key, id);
    key.push(b'}');
    key
}

fn escape_into(out: &mut Vec<u8>, id: &[u8]) {
    for &b in id {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'{' => out.extend_from_slice(b"%7B"),
            b'}' => out.extend_from_slice(b"%7D"),
            _ => out.push(b),
        }
    }
}

/// The Redis Cluster slot of a client's keys.
pub fn client_slot(client_id: &[u8]) -> u16 {
    let mut tag = Vec::with_capacity(client_id.len());
    escape_into(&mut tag, client_id);
    if tag.is_empty() {
        // `{}` is no hash tag: Redis hashes the whole key then. Client ids
        // are never empty (checked on the Erlang side), so this is unused.
        return 0;
    }
    crc16(&tag) % SLOTS
}

/// A short tag that hashes to `slot`, the same for every process and version.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); SLOTS as usize];
        let mut missing = SLOTS as usize;
        let mut n: u64 = 0;
        while missing > 0 {
            let candidate = format!("s{n}");
            let slot = (crc16(candidate.as_bytes()) % SLOTS) as usize;
            if tags[slot].is_empty() {
                tags[slot] = candidate;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[(slot % SLOTS) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::slots::key_slot;
    use proptest::prelude::*;

    fn slot(key: &[u8]) -> u16 {
        key_slot(key)
    }

    #[test]
    fn layout_is_readable() {
        let k = Keys::new(b"emqx:");
        assert_eq!(k.session(b"c1"), b"emqx:sess:{c1}");
        assert_eq!(k.lease(b"c1"), b"emqx:lease:{c1}");
        assert_eq!(k.queue(b"c1"), b"emqx:q:{c1}");
        assert_eq!(k.queue_bodies(b"c1"), b"emqx:qb:{c1}");
        assert_eq!(k.session(b"a{b}%"), b"emqx:sess:{a%7Bb%7D%25}");
        assert_eq!(k.routes(3), b"emqx:rt:{r3}");
        assert_eq!(k.route_trie(3), b"emqx:rtrie:{r3}");
        assert_eq!(k.route_events(), b"emqx:rt:events");
        assert_eq!(k.ds_subscriptions(b"c1"), b"emqx:ds:sub:{c1}");
        assert_eq!(k.ds_filters(2), b"emqx:ds:f:{d2}");
        assert_eq!(k.ds_holders(2, b"a/+"), b"emqx:ds:h:{d2}:a/+");
        assert_eq!(k.ds_stream(b"sensors", 3), b"emqx:ds:m:{sensors/3}");
        assert_eq!(k.ds_stream(b"a{b}", 0), b"emqx:ds:m:{a%7Bb%7D/0}");
        assert_eq!(k.ds_stream(b"", 1), b"emqx:ds:m:{/1}");
        assert_eq!(slot(&k.ds_holders(5, b"x")), slot(&k.ds_filters(5)));
        assert_eq!(k.members(), b"emqx:nodes:{n}");
        assert_eq!(k.incarnations(), b"emqx:nodes:inc:{n}");
        assert_eq!(k.reap_leases(), b"emqx:nodes:reap:{n}");
        assert_eq!(k.reap_counts(), b"emqx:nodes:reaped:{n}");
        assert_eq!(k.node_sequence(), b"emqx:nodes:seq:{n}");
        assert_eq!(k.restore_marker(), b"emqx:restore:{b}");
        assert_eq!(k.limiter(b"conn", b"alice"), b"emqx:lim:conn:{alice}");
        assert_eq!(k.limiter(b"a{:}", b"b{c}"), b"emqx:lim:a%7B:%7D:{b%7Bc%7D}");
    }

    /// Every data key of the layout is backed up; the deployment's state is
    /// not, nor the keys of a deployment under a longer prefix.
    #[test]
    fn a_backup_takes_the_data_of_its_own_prefix() {
        let backed_up = |key: Vec<u8>| Keys::is_backed_up(&key[b"emqx:".len()..]);
        let data = |k: &Keys| {
            vec![
                k.session(b"c"),
                k.fence(b"c"),
                k.queue(b"c"),
                k.queue_expiry(b"c"),
                k.queue_meta(b"c"),
                k.queue_bodies(b"c"),
                k.session_index(1),
                k.session_count(1),
                k.session_total(),
                k.channels(1),
                k.routes(1),
                k.route_trie(1),
                k.ds_subscriptions(b"c"),
                k.ds_filters(1),
                k.ds_holders(1, b"a/+"),
                k.ds_stream(b"a", 0),
                k.ds_levels(),
                k.limiter(b"conn", b"alice"),
                k.limiter(b"", b"x"),
            ]
        };
        let k = Keys::new(b"emqx:");
        for key in data(&k) {
            assert!(backed_up(key.clone()), "{}", key.escape_ascii());
        }
        for key in [
            k.lease(b"c"),
            k.lease_owners(1),
            k.members(),
            k.incarnations(),
            k.reap_leases(),
            k.reap_counts(),
            k.node_sequence(),
            k.restore_marker(),
            k.session_sweep(),
        ] {
            assert!(!backed_up(key.clone()), "{}", key.escape_ascii());
        }
        for key in data(&Keys::new(b"emqx:eu:")) {
            assert!(!backed_up(key.clone()), "{}", key.escape_ascii());
        }
    }

    #[test]
    fn membership_keys_share_one_slot() {
        let k = Keys::new(b"p:");
        let s = slot(&k.members());
        for key in [
            k.incarnations(),
            k.reap_leases(),
            k.reap_counts(),
            k.node_sequence(),
        ] {
            assert_eq!(slot(&key), s);
        }
    }

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        let k = Keys::new(b"p:");
        for s in 0..SLOTS {
            assert_eq!(slot(&k.session_index(s)), s);
            assert_eq!(slot(&k.session_count(s)), s);
            assert_eq!(slot(&k.channels(s)), s);
            assert_eq!(slot(&k.lease_owners(s)), s);
        }
    }

    proptest! {
        #[test]
        fn a_clients_keys_share_its_slot(id in proptest::collection::vec(any::<u8>(), 1..40)) {
            let k = Keys::new(b"emqx:");
            let s = client_slot(&id);
            prop_assert_eq!(slot(&k.session(&id)), s);
            prop_assert_eq!(slot(&k.lease(&id)), s);
            prop_assert_eq!(slot(&k.fence(&id)), s);
            prop_assert_eq!(slot(&k.queue(&id)), s);
            prop_assert_eq!(slot(&k.queue_expiry(&id)), s);
            prop_assert_eq!(slot(&k.queue_meta(&id)), s);
            prop_assert_eq!(slot(&k.queue_bodies(&id)), s);
            prop_assert_eq!(slot(&k.session_index(s)), s);
            prop_assert_eq!(slot(&k.channels(s)), s);
            prop_assert_eq!(slot(&k.limiter(b"any{name}", &id)), s);
        }

        #[test]
        fn limiter_keys_tell_name_and_key_apart(
            a in proptest::collection::vec(any::<u8>(), 0..8),
            b in proptest::collection::vec(any::<u8>(), 1..8),
            c in proptest::collection::vec(any::<u8>(), 0..8),
            d in proptest::collection::vec(any::<u8>(), 1..8),
        ) {
            prop_assume!((&a, &b) != (&c, &d));
            let k = Keys::new(b"emqx:");
            prop_assert_ne!(k.limiter(&a, &b), k.limiter(&c, &d));
        }

        #[test]
        fn distinct_clients_have_distinct_keys(
            a in proptest::collection::vec(any::<u8>(), 1..12),
            b in proptest::collection::vec(any::<u8>(), 1..12),
        ) {
            prop_assume!(a != b);
            let k = Keys::new(b"emqx:");
            prop_assert_ne!(k.session(&a), k.session(&b));
            prop_assert_ne!(k.queue_bodies(&a), k.queue_bodies(&b));
        }
    }
}
