//! Lua scripts that keep their source: redis-rs `Script` exposes only its
//! SHA, and a cluster needs the source to load a script on every master.

use redis::Script;

pub struct Lua {
    source: String,
    script: Script,
}

impl Lua {
    /// A script made of `parts`, after `guard.lua`, which every script uses
    /// to check what it reads before its first write.
    pub fn new(parts: &[&str]) -> Self {
        let source = [include_str!("lua/guard.lua")]
            .iter()
            .chain(parts)
            .copied()
            .collect::<String>();
        let script = Script::new(&source);
        Lua { source, script }
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
}
