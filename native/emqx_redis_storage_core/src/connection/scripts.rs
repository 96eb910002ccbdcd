//! Lua scripts with their source and SHA: calls name a script by its SHA,
//! and a cluster needs the source to load a script on every master.

use std::sync::OnceLock;

use redis::Script;

pub struct Lua {
    source: String,
    /// The SHA1 of `source`, as EVALSHA names it (redis-rs computes it).
    hash: String,
    /// The group form, made on first use (`group.rs`).
    group: OnceLock<Box<Lua>>,
}

const GUARD: &str = include_str!("lua/guard.lua");

impl Lua {
    /// A script made of `parts`, after `guard.lua`, which every script uses
    /// to check what it reads before its first write.
    pub fn new(parts: &[&str]) -> Self {
        Self::of([GUARD].iter().chain(parts).copied().collect())
    }

    fn of(source: String) -> Self {
        let hash = Script::new(&source).get_hash().to_string();
        Lua {
            source,
            hash,
            group: OnceLock::new(),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The group form of this script: the script as a function of KEYS and
    /// ARGV, run once per call of a group, each run's error caught
    /// (`lua/group.lua`). A call's checks fail before its first write, so
    /// a call that failed changed nothing, and the others go on.
    pub fn group(&self) -> &Lua {
        self.group.get_or_init(|| {
            let source = [
                GUARD,
                "local function call(KEYS, ARGV)\n",
                // the script's own parts, after guard.lua
                &self.source[GUARD.len()..],
                "\nend\n",
                include_str!("lua/group.lua"),
            ]
            .concat();
            Box::new(Self::of(source))
        })
    }
}
