//! Lua scripts that keep their source: redis-rs `Script` exposes only its
//! SHA, and a cluster needs the source to load a script on every master.

use std::sync::OnceLock;

use redis::Script;

pub struct Lua {
    source: String,
    script: Script,
    /// Where the script's own parts start in `source`, after `guard.lua`.
    body: usize,
    /// The group form, made on first use (`group.rs`).
    group: OnceLock<Box<Lua>>,
}

const GUARD: &str = include_str!("lua/guard.lua");

impl Lua {
    /// A script made of `parts`, after `guard.lua`, which every script uses
    /// to check what it reads before its first write.
    pub fn new(parts: &[&str]) -> Self {
        Self::of(GUARD.len(), [GUARD].iter().chain(parts).copied().collect())
    }

    fn of(body: usize, source: String) -> Self {
        let script = Script::new(&source);
        Lua {
            source,
            script,
            body,
            group: OnceLock::new(),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn hash(&self) -> &str {
        self.script.get_hash()
    }

    pub fn script(&self) -> &Script {
        &self.script
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
                &self.source[self.body..],
                "\nend\n",
                include_str!("lua/group.lua"),
            ]
            .concat();
            Box::new(Self::of(GUARD.len(), source))
        })
    }
}
