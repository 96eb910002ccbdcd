//! In-memory route index: which destinations have a filter that matches a
//! given topic name.
//!
//! Filters without wildcards live in a hash map keyed by the whole filter, so
//! their part of a lookup is one hash probe. Wildcard filters live in a trie
//! keyed by topic level. Matching walks only the trie branches that can match
//! the topic (the literal level and `+` at each step), so its cost depends on
//! the topic's levels and the matching filters, not on the number of routes.
//!
//! Trie nodes are kept in an arena and addressed by index. This keeps every
//! traversal iterative: a filter may have up to 32768 levels, and recursion
//! (including the recursive `Drop` of a boxed tree) that deep could overflow
//! a scheduler thread's stack, which in a NIF takes the whole VM down.
//!
//! Semantics match [`topic::matches`] exactly, including for invalid input:
//! invalid filters are never stored and invalid topic names match nothing.

use crate::store::topic;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

type NodeId = usize;

const ROOT: NodeId = 0;

/// The destinations of one filter, in insertion order (swap-removal aside) so
/// that `matches` returns them in a deterministic order.
///
/// Most filters have a handful of destinations, for which a linear scan beats
/// hashing; a position map is added only once the set grows large.
struct DestSet<D> {
    items: Vec<D>,
    // Boxed to keep the (usually unused) map at one word: there may be
    // millions of sets.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<D, usize>>>,
}

const INDEX_THRESHOLD: usize = 16;

// Written by hand: `derive(Default)` would require `D: Default`.
impl<D> Default for DestSet<D> {
    fn default() -> Self {
        DestSet {
            items: Vec::new(),
            index: None,
        }
    }
}

impl<D: Eq + Hash + Clone> DestSet<D> {
    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, D> {
        self.items.iter()
    }

    fn position(&self, dest: &D) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(dest).copied(),
            None => self.items.iter().position(|d| d == dest),
        }
    }

    fn insert(&mut self, dest: D) -> bool {
        if self.position(&dest).is_some() {
            return false;
        }
        if let Some(index) = &mut self.index {
            index.insert(dest.clone(), self.items.len());
        }
        self.items.push(dest);
        if self.index.is_none() && self.items.len() > INDEX_THRESHOLD {
            self.reindex();
        }
        true
    }

    fn remove(&mut self, dest: &D) -> bool {
        let Some(i) = self.position(dest) else {
            return false;
        };
        self.items.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(dest);
            if let Some(p) = self.items.get(i).and_then(|moved| index.get_mut(moved)) {
                *p = i;
            }
        }
        // Hysteresis, so that a set hovering around the threshold does not
        // rebuild its map on every change.
        if self.items.len() <= INDEX_THRESHOLD / 2 {
            self.index = None;
        }
        true
    }

    /// Removes and returns every destination satisfying `pred`.
    fn extract(&mut self, pred: &impl Fn(&D) -> bool) -> Vec<D> {
        if !self.items.iter().any(pred) {
            return Vec::new();
        }
        let (gone, kept): (Vec<D>, Vec<D>) = std::mem::take(&mut self.items)
            .into_iter()
            .partition(|d| pred(d));
        self.items = kept;
        self.reindex();
        gone
    }

    fn reindex(&mut self) {
        self.index = (self.items.len() > INDEX_THRESHOLD)
            .then(|| Box::new(self.items.iter().cloned().zip(0..).collect()));
    }
}

/// A trie node; the path from the root spells the filter's levels.
struct Node<D> {
    /// Children by literal level.
    children: HashMap<Box<[u8]>, NodeId>,
    /// The `+` child.
    plus: Option<NodeId>,
    /// Destinations of the filter `<path>/#` (`#` alone at the root). `#` is
    /// always the last level, so it needs no node of its own.
    hash: DestSet<D>,
    /// Destinations of the filter `<path>`.
    dests: DestSet<D>,
}

impl<D> Default for Node<D> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            hash: DestSet::default(),
            dests: DestSet::default(),
        }
    }
}

impl<D: Eq + Hash + Clone> Node<D> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.dests.is_empty()
    }
}

/// Splits a valid wildcard filter into the levels that get trie nodes and
/// whether it ends in `#`.
fn split_filter(filter: &[u8]) -> (Option<&[u8]>, bool) {
    if filter == b"#" {
        (None, true)
    } else if let Some(prefix) = filter.strip_suffix(b"/#") {
        (Some(prefix), true)
    } else {
        (Some(filter), false)
    }
}

fn levels(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| b == b'/')
}

fn is_exact(filter: &[u8]) -> bool {
    !filter.iter().any(|&b| b == b'+' || b == b'#')
}

/// The filter `<path>/#`.
fn multi_level(path: &[u8]) -> Vec<u8> {
    [path, b"/#"].concat()
}

/// Clones each destination once, keeping the first occurrence's position.
fn dedup<D: Eq + Hash + Clone>(found: Vec<&D>) -> Vec<D> {
    // The common single-match case needs no set.
    if found.len() < 2 {
        return found.into_iter().cloned().collect();
    }
    let mut seen = HashSet::with_capacity(found.len());
    found
        .into_iter()
        .filter(|d| seen.insert(*d))
        .cloned()
        .collect()
}

/// A set of (filter, destination) routes.
pub struct RouteIndex<D> {
    exact: HashMap<Box<[u8]>, DestSet<D>>,
    /// Trie arena; `nodes[ROOT]` always exists. Freed slots are recycled.
    nodes: Vec<Node<D>>,
    free: Vec<NodeId>,
    len: usize,
}

impl<D: Eq + Hash + Clone> Default for RouteIndex<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Eq + Hash + Clone> RouteIndex<D> {
    pub fn new() -> Self {
        RouteIndex {
            exact: HashMap::new(),
            nodes: vec![Node::default()],
            free: Vec::new(),
            len: 0,
        }
    }

    /// Number of (filter, destination) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// Adds a route; returns whether it was new. The caller is expected to
    /// have validated `filter`; an invalid one is ignored (returns `false`)
    /// because it could never match anything.
    pub fn insert(&mut self, filter: &[u8], dest: D) -> bool {
        if topic::validate_filter(filter).is_err() {
            return false;
        }
        let added = if is_exact(filter) {
            self.exact.entry(filter.into()).or_default().insert(dest)
        } else {
            let (path, multi) = split_filter(filter);
            let mut node = ROOT;
            for level in path.into_iter().flat_map(levels) {
                node = match self.child(node, level) {
                    Some(child) => child,
                    None => self.add_child(node, level),
                };
            }
            let node = &mut self.nodes[node];
            let set = if multi {
                &mut node.hash
            } else {
                &mut node.dests
            };
            set.insert(dest)
        };
        self.len += usize::from(added);
        added
    }

    /// Removes a route; returns whether it was present. Trie nodes left empty
    /// are freed.
    pub fn remove(&mut self, filter: &[u8], dest: &D) -> bool {
        if topic::validate_filter(filter).is_err() {
            return false;
        }
        let removed = if is_exact(filter) {
            match self.exact.get_mut(filter) {
                Some(set) => {
                    let removed = set.remove(dest);
                    if set.is_empty() {
                        self.exact.remove(filter);
                    }
                    removed
                }
                None => false,
            }
        } else {
            let (path, multi) = split_filter(filter);
            // Each step down, with the level that leads to it, for pruning.
            let mut steps: Vec<(NodeId, &[u8])> = Vec::new();
            let mut node = ROOT;
            for level in path.into_iter().flat_map(levels) {
                match self.child(node, level) {
                    Some(child) => {
                        steps.push((node, level));
                        node = child;
                    }
                    None => return false,
                }
            }
            let n = &mut self.nodes[node];
            let set = if multi { &mut n.hash } else { &mut n.dests };
            let removed = set.remove(dest);
            if removed {
                // Free the chain of nodes that became empty, bottom-up.
                while let Some((parent, level)) = steps.pop() {
                    if !self.nodes[node].is_empty() {
                        break;
                    }
                    self.detach(parent, level);
                    node = parent;
                }
            }
            removed
        };
        self.len -= usize::from(removed);
        removed
    }

    /// Destinations of exactly `filter` (no matching involved).
    pub fn dests(&self, filter: &[u8]) -> Vec<D> {
        self.dest_set(filter)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every destination with at least one filter matching the topic name
    /// `topic`, each once. The order is deterministic for a given history of
    /// inserts and removes. An invalid topic name matches nothing.
    pub fn matches(&self, topic: &[u8]) -> Vec<D> {
        if topic::validate_name(topic).is_err() {
            return Vec::new();
        }
        let mut found: Vec<&D> = Vec::new();
        if let Some(set) = self.exact.get(topic) {
            found.extend(set.iter());
        }
        // A filter starting with a wildcard does not match `$` topics (4.7.2),
        // so the root's `+` and `#` are skipped for those.
        let dollar = topic.first() == Some(&b'$');
        // (node, levels of the topic not yet consumed)
        let mut stack: Vec<(NodeId, Option<&[u8]>)> = vec![(ROOT, Some(topic))];
        while let Some((id, rest)) = stack.pop() {
            let node = &self.nodes[id];
            let wildcards_apply = !(dollar && id == ROOT);
            if wildcards_apply {
                // `#` matches any remaining levels, including none.
                found.extend(node.hash.iter());
            }
            let Some(rest) = rest else {
                found.extend(node.dests.iter());
                continue;
            };
            let mut split = rest.splitn(2, |&b| b == b'/');
            let level = split.next().unwrap_or_default();
            let tail = split.next();
            if let Some(&child) = node.children.get(level) {
                stack.push((child, tail));
            }
            if let Some(plus) = node.plus.filter(|_| wildcards_apply) {
                stack.push((plus, tail));
            }
        }
        dedup(found)
    }

    /// Every filter with at least one destination, sorted.
    pub fn filters(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self.exact.keys().map(|f| f.to_vec()).collect();
        if !self.nodes[ROOT].hash.is_empty() {
            out.push(b"#".to_vec());
        }
        self.visit(|id, _, _, path| {
            let node = &self.nodes[id];
            if !node.hash.is_empty() {
                out.push(multi_level(path));
            }
            if !node.dests.is_empty() {
                out.push(path.to_vec());
            }
        });
        out.sort_unstable();
        out
    }

    /// Removes and returns every route whose destination satisfies `pred`
    /// (e.g. all routes of a node that went down).
    pub fn remove_dests_where(&mut self, pred: impl Fn(&D) -> bool) -> Vec<(Vec<u8>, D)> {
        let mut out = Vec::new();
        self.exact.retain(|filter, set| {
            out.extend(set.extract(&pred).into_iter().map(|d| (filter.to_vec(), d)));
            !set.is_empty()
        });
        for d in self.nodes[ROOT].hash.extract(&pred) {
            out.push((b"#".to_vec(), d));
        }
        // First find what to change, then change it: the walk borrows the
        // trie. Paths are built only for nodes that lose a destination.
        let mut order: Vec<(NodeId, NodeId, Box<[u8]>)> = Vec::new();
        let mut hits: Vec<(NodeId, Vec<u8>)> = Vec::new();
        self.visit(|id, parent, level, path| {
            order.push((id, parent, level.into()));
            let node = &self.nodes[id];
            if node.hash.iter().chain(node.dests.iter()).any(&pred) {
                hits.push((id, path.to_vec()));
            }
        });
        for (id, path) in hits {
            let node = &mut self.nodes[id];
            for d in node.hash.extract(&pred) {
                out.push((multi_level(&path), d));
            }
            for d in node.dests.extract(&pred) {
                out.push((path.clone(), d));
            }
        }
        // Descendants come after their ancestors in pre-order, so going
        // backwards frees children before deciding about their parent.
        for (id, parent, level) in order.iter().rev() {
            if self.nodes[*id].is_empty() {
                self.detach(*parent, level);
            }
        }
        self.len -= out.len();
        out
    }

    fn dest_set(&self, filter: &[u8]) -> Option<&DestSet<D>> {
        if topic::validate_filter(filter).is_err() {
            return None;
        }
        if is_exact(filter) {
            return self.exact.get(filter);
        }
        let (path, multi) = split_filter(filter);
        let mut node = ROOT;
        for level in path.into_iter().flat_map(levels) {
            node = self.child(node, level)?;
        }
        let node = &self.nodes[node];
        Some(if multi { &node.hash } else { &node.dests })
    }

    fn child(&self, node: NodeId, level: &[u8]) -> Option<NodeId> {
        let node = &self.nodes[node];
        if level == b"+" {
            node.plus
        } else {
            node.children.get(level).copied()
        }
    }

    fn add_child(&mut self, parent: NodeId, level: &[u8]) -> NodeId {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::default());
                self.nodes.len() - 1
            }
        };
        let parent = &mut self.nodes[parent];
        if level == b"+" {
            parent.plus = Some(id);
        } else {
            parent.children.insert(level.into(), id);
        }
        id
    }

    /// Unlinks the child of `parent` reached by `level` and frees its slot.
    /// The child must be empty.
    fn detach(&mut self, parent: NodeId, level: &[u8]) {
        let parent = &mut self.nodes[parent];
        let child = if level == b"+" {
            parent.plus.take()
        } else {
            parent.children.remove(level)
        };
        let Some(child) = child else {
            return;
        };
        // Reset, which also releases the node's (empty) allocations.
        self.nodes[child] = Node::default();
        self.free.push(child);
        if self.free.len() + 1 == self.nodes.len() {
            // The trie is empty again: give the arena's memory back.
            self.nodes.truncate(1);
            self.nodes.shrink_to_fit();
            self.free = Vec::new();
        }
    }

    /// Calls `f(node, parent, level, path)` for every non-root trie node in
    /// pre-order, where `path` is the node's levels joined by `/`. One path
    /// buffer is shared, so the cost is linear in the size of the trie even
    /// for very deep filters.
    fn visit<'a>(&'a self, mut f: impl FnMut(NodeId, NodeId, &'a [u8], &[u8])) {
        // (node, parent, level leading to it, length of the parent's path)
        let mut stack: Vec<(NodeId, NodeId, &[u8], usize)> = vec![];
        let push_children = |stack: &mut Vec<_>, id: NodeId, len: usize| {
            let node = &self.nodes[id];
            for (level, &child) in &node.children {
                stack.push((child, id, &level[..], len));
            }
            if let Some(plus) = node.plus {
                stack.push((plus, id, &b"+"[..], len));
            }
        };
        push_children(&mut stack, ROOT, 0);
        let mut path = Vec::new();
        while let Some((id, parent, level, parent_len)) = stack.pop() {
            // Everything visited since this entry was pushed lies below the
            // parent, so the buffer still starts with the parent's path.
            path.truncate(parent_len);
            if parent != ROOT {
                path.push(b'/');
            }
            path.extend_from_slice(level);
            f(id, parent, level, &path);
            push_children(&mut stack, id, path.len());
        }
    }
}

#[cfg(test)]
impl<D: Eq + Hash + Clone + std::fmt::Debug> RouteIndex<D> {
    /// Live trie nodes, root excluded.
    fn node_count(&self) -> usize {
        self.nodes.len() - 1 - self.free.len()
    }

    /// Panics if an internal invariant is broken.
    fn check_invariants(&self) {
        fn check_set<D: Eq + Hash + Clone + std::fmt::Debug>(set: &DestSet<D>) -> usize {
            let unique: HashSet<&D> = set.items.iter().collect();
            assert_eq!(unique.len(), set.items.len(), "duplicate destination");
            if let Some(index) = &set.index {
                assert_eq!(index.len(), set.items.len());
                for (i, d) in set.items.iter().enumerate() {
                    assert_eq!(index.get(d), Some(&i));
                }
            }
            set.items.len()
        }
        let mut pairs = 0;
        for (filter, set) in &self.exact {
            assert!(is_exact(filter));
            assert!(!set.is_empty(), "empty exact entry");
            pairs += check_set(set);
        }
        let root = &self.nodes[ROOT];
        assert!(root.dests.is_empty());
        pairs += check_set(&root.hash);
        let mut walk = Vec::new();
        self.visit(|id, _, _, _| walk.push(id));
        assert_eq!(walk.len(), self.node_count(), "unreachable live nodes");
        let mut seen = HashSet::new();
        for id in &walk {
            assert!(seen.insert(*id), "node reachable twice");
            assert!(!self.free.contains(id), "reachable node is free");
            let node = &self.nodes[*id];
            assert!(!node.is_empty(), "empty node kept");
            assert!(!node.children.contains_key(&b"+"[..]));
            pairs += check_set(&node.hash) + check_set(&node.dests);
        }
        assert_eq!(pairs, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn index(routes: &[(&str, u32)]) -> RouteIndex<u32> {
        let mut idx = RouteIndex::new();
        for (f, d) in routes {
            idx.insert(f.as_bytes(), *d);
        }
        idx.check_invariants();
        idx
    }

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    fn matching(idx: &RouteIndex<u32>, topic: &str) -> Vec<u32> {
        sorted(idx.matches(topic.as_bytes()))
    }

    #[test]
    fn empty_index() {
        let idx: RouteIndex<u32> = RouteIndex::default();
        assert!(idx.is_empty());
        assert_eq!(idx.len(), 0);
        assert!(idx.matches(b"a").is_empty());
        assert!(idx.dests(b"#").is_empty());
        assert!(idx.filters().is_empty());
        idx.check_invariants();
    }

    #[test]
    fn insert_is_idempotent_per_pair() {
        let mut idx = RouteIndex::new();
        assert!(idx.insert(b"a/b", 1));
        assert!(!idx.insert(b"a/b", 1));
        assert!(idx.insert(b"a/b", 2));
        assert!(idx.insert(b"a/+", 1));
        assert!(!idx.insert(b"a/+", 1));
        assert!(idx.insert(b"#", 1));
        assert!(!idx.insert(b"#", 1));
        assert_eq!(idx.len(), 4);
        assert_eq!(sorted(idx.dests(b"a/b")), vec![1, 2]);
        idx.check_invariants();
    }

    #[test]
    fn exact_and_wildcard_matching() {
        let idx = index(&[
            ("sport/tennis/player1", 1),
            ("sport/tennis/player1/#", 2),
            ("sport/tennis/+", 3),
            ("sport/#", 4),
            ("sport/+", 5),
            ("+/+", 6),
            ("/+", 7),
            ("+", 8),
            ("#", 9),
        ]);
        assert_eq!(matching(&idx, "sport/tennis/player1"), vec![1, 2, 3, 4, 9]);
        assert_eq!(
            matching(&idx, "sport/tennis/player1/score/wimbledon"),
            vec![2, 4, 9]
        );
        assert_eq!(matching(&idx, "sport"), vec![4, 8, 9]);
        assert_eq!(matching(&idx, "sport/"), vec![4, 5, 6, 9]);
        assert_eq!(matching(&idx, "/finance"), vec![6, 7, 9]);
        assert_eq!(matching(&idx, "/"), vec![6, 7, 9]);
        assert_eq!(matching(&idx, "Sport"), vec![8, 9]);
    }

    #[test]
    fn dollar_topics() {
        let idx = index(&[
            ("#", 1),
            ("+/monitor/Clients", 2),
            ("$SYS/#", 3),
            ("$SYS/monitor/+", 4),
            ("+", 5),
            ("$SYS/monitor/Clients", 6),
            ("+/#", 7),
        ]);
        assert_eq!(matching(&idx, "$SYS/monitor/Clients"), vec![3, 4, 6]);
        assert_eq!(matching(&idx, "$SYS"), vec![3]);
        assert_eq!(matching(&idx, "$"), Vec::<u32>::new());
        assert_eq!(matching(&idx, "x/monitor/Clients"), vec![1, 2, 7]);
        // Only a leading `$` is special.
        assert_eq!(matching(&idx, "x$"), vec![1, 5, 7]);
    }

    #[test]
    fn empty_levels() {
        let idx = index(&[("a/+/b", 1), ("a//b", 2), ("a/b", 3), ("a/#", 4), ("/#", 5)]);
        assert_eq!(matching(&idx, "a//b"), vec![1, 2, 4]);
        assert_eq!(matching(&idx, "a/b"), vec![3, 4]);
        assert_eq!(matching(&idx, "a"), vec![4]);
        assert_eq!(matching(&idx, "a/"), vec![4]);
        assert_eq!(matching(&idx, "/"), vec![5]);
        assert_eq!(matching(&idx, "//a"), vec![5]);
    }

    #[test]
    fn each_dest_once() {
        let idx = index(&[("a/b", 1), ("a/+", 1), ("#", 1), ("a/#", 1), ("+/b", 2)]);
        assert_eq!(matching(&idx, "a/b"), vec![1, 2]);
    }

    #[test]
    fn match_order_is_deterministic() {
        let routes: Vec<(String, u32)> = (0..200)
            .map(|i| {
                (
                    ["a/+", "+/b", "#", "a/b", "a/#"][i % 5].to_string(),
                    i as u32,
                )
            })
            .collect();
        let build = || {
            let mut idx = RouteIndex::new();
            for (f, d) in &routes {
                idx.insert(f.as_bytes(), *d);
            }
            idx
        };
        let first = build().matches(b"a/b");
        assert_eq!(first.len(), 200);
        for _ in 0..5 {
            assert_eq!(build().matches(b"a/b"), first);
        }
    }

    #[test]
    fn dests_is_exact_lookup() {
        let idx = index(&[("a", 1), ("a/#", 2), ("a/+", 3), ("#", 4), ("+", 5)]);
        assert_eq!(idx.dests(b"a"), vec![1]);
        assert_eq!(idx.dests(b"a/#"), vec![2]);
        assert_eq!(idx.dests(b"a/+"), vec![3]);
        assert_eq!(idx.dests(b"#"), vec![4]);
        assert_eq!(idx.dests(b"+"), vec![5]);
        assert!(idx.dests(b"a/b").is_empty());
        assert!(idx.dests(b"a/+/#").is_empty());
        assert!(idx.dests(b"b/#").is_empty());
    }

    #[test]
    fn filters_lists_every_filter_once_sorted() {
        let idx = index(&[
            ("a", 1),
            ("a", 2),
            ("a/#", 2),
            ("#", 3),
            ("+/b", 3),
            ("+", 1),
            ("/", 1),
        ]);
        let expected: Vec<Vec<u8>> = ["#", "+", "+/b", "/", "a", "a/#"]
            .iter()
            .map(|f| f.as_bytes().to_vec())
            .collect();
        assert_eq!(idx.filters(), expected);
    }

    #[test]
    fn remove_and_prune() {
        let mut idx = index(&[("a/+/c/#", 1), ("a/+", 2), ("a/b", 3), ("#", 4)]);
        assert!(idx.node_count() > 0);
        assert!(!idx.remove(b"a/+/c/#", &9));
        assert!(!idx.remove(b"a/+/c", &1));
        assert!(!idx.remove(b"x/+", &1));
        assert!(idx.remove(b"a/+/c/#", &1));
        assert!(!idx.remove(b"a/+/c/#", &1));
        idx.check_invariants();
        // "a" and "a/+" are still needed by "a/+".
        assert_eq!(idx.node_count(), 2);
        assert_eq!(matching(&idx, "a/x/c/d"), vec![4]);
        assert_eq!(matching(&idx, "a/x"), vec![2, 4]);
        assert!(idx.remove(b"a/+", &2));
        assert!(idx.remove(b"a/b", &3));
        assert!(idx.remove(b"#", &4));
        idx.check_invariants();
        assert!(idx.is_empty());
        assert_eq!(idx.node_count(), 0);
        assert_eq!(idx.nodes.len(), 1);
        assert!(idx.exact.is_empty());
    }

    #[test]
    fn remove_keeps_shared_prefixes() {
        let mut idx = index(&[("a/+", 1), ("a/+/b", 1), ("a/c/+", 1)]);
        assert!(idx.remove(b"a/+", &1));
        idx.check_invariants();
        assert_eq!(matching(&idx, "a/x/b"), vec![1]);
        assert_eq!(matching(&idx, "a/c/d"), vec![1]);
        assert!(matching(&idx, "a/x").is_empty());
        assert!(idx.remove(b"a/+/b", &1));
        idx.check_invariants();
        assert_eq!(idx.node_count(), 3); // a, a/c, a/c/+
    }

    #[test]
    fn freed_nodes_are_reused() {
        let mut idx = RouteIndex::new();
        idx.insert(b"keep/+", 0);
        for i in 0..100u32 {
            let f = format!("t/{i}/+");
            assert!(idx.insert(f.as_bytes(), i));
            assert!(idx.remove(f.as_bytes(), &i));
        }
        idx.check_invariants();
        assert_eq!(idx.node_count(), 2);
        assert_eq!(idx.nodes.len(), 6);
    }

    #[test]
    fn many_dests_per_filter() {
        let mut idx = RouteIndex::new();
        for d in 0..100u32 {
            assert!(idx.insert(b"a/+", d));
            assert!(idx.insert(b"a/b", d));
        }
        assert!(!idx.insert(b"a/+", 50));
        idx.check_invariants();
        assert_eq!(idx.len(), 200);
        assert_eq!(matching(&idx, "a/b"), (0..100).collect::<Vec<_>>());
        for d in (0..100u32).filter(|d| d % 3 != 0) {
            assert!(idx.remove(b"a/+", &d));
            assert!(!idx.remove(b"a/+", &d));
            idx.check_invariants();
        }
        assert_eq!(
            sorted(idx.dests(b"a/+")),
            (0..100).filter(|d| d % 3 == 0).collect::<Vec<_>>()
        );
        let gone = idx.remove_dests_where(|d| *d >= 10);
        assert_eq!(gone.len(), 90 + 30);
        idx.check_invariants();
        assert_eq!(sorted(idx.dests(b"a/b")), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn remove_dests_where_returns_pairs_and_prunes() {
        let mut idx = index(&[
            ("a", 1),
            ("a", 2),
            ("#", 1),
            ("a/#", 1),
            ("a/+/b", 1),
            ("a/+/b", 2),
            ("x/y/+/z", 1),
            ("+", 2),
        ]);
        let mut gone: Vec<(String, u32)> = idx
            .remove_dests_where(|d| *d == 1)
            .into_iter()
            .map(|(f, d)| (String::from_utf8(f).unwrap(), d))
            .collect();
        gone.sort();
        let expected: Vec<(String, u32)> = ["#", "a", "a/#", "a/+/b", "x/y/+/z"]
            .iter()
            .map(|f| (f.to_string(), 1))
            .collect();
        assert_eq!(gone, expected);
        idx.check_invariants();
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.node_count(), 4); // a, a/+, a/+/b, +
        assert!(idx.remove_dests_where(|d| *d == 1).is_empty());
        assert_eq!(idx.remove_dests_where(|_| true).len(), 3);
        idx.check_invariants();
        assert!(idx.is_empty());
        assert_eq!(idx.node_count(), 0);
    }

    #[test]
    fn clear_empties_everything() {
        let mut idx = index(&[("a", 1), ("a/+", 1), ("#", 2)]);
        idx.clear();
        idx.check_invariants();
        assert!(idx.is_empty());
        assert_eq!(idx.node_count(), 0);
        assert!(idx.matches(b"a").is_empty());
        assert!(idx.insert(b"a/+", 1));
        assert_eq!(idx.matches(b"a/b"), vec![1]);
    }

    #[test]
    fn invalid_input_is_harmless() {
        let mut idx = index(&[("#", 1), ("a", 1)]);
        let long = vec![b'a'; topic::MAX_LEN + 1];
        let bad: [&[u8]; 9] = [
            b"", b"a\0", b"\xff", b"a/#/b", b"a+", b"#a", b"a/\xc3", &long, b"+/#/",
        ];
        for b in bad {
            assert!(!idx.insert(b, 2));
            assert!(!idx.remove(b, &1));
            assert!(idx.dests(b).is_empty());
            assert!(idx.matches(b).is_empty());
        }
        // Wildcards in a topic name make it invalid.
        assert!(idx.matches(b"a/+").is_empty());
        assert!(idx.matches(b"#").is_empty());
        idx.check_invariants();
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn deepest_filters_do_not_overflow_the_stack() {
        // 32768 levels, the most that fits in 65535 bytes.
        let plus: Vec<u8> = [&b"+/".repeat(32767)[..], b"+"].concat();
        let hash: Vec<u8> = [&b"a/".repeat(32767)[..], b"#"].concat();
        let deep_name = b"/".repeat(32767);
        let deep_a: Vec<u8> = [&b"a/".repeat(32767)[..], b"a"].concat();
        // Run on a small stack, like a scheduler thread's.
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut idx = RouteIndex::new();
                assert!(idx.insert(&plus, 1));
                assert!(idx.insert(&hash, 2));
                assert_eq!(idx.matches(&deep_name), vec![1]);
                assert_eq!(sorted(idx.matches(&deep_a)), vec![1, 2]);
                assert_eq!(idx.filters().len(), 2);
                assert!(idx.remove(&plus, &1));
                assert_eq!(idx.remove_dests_where(|_| true).len(), 1);
                assert_eq!(idx.node_count(), 0);
                // And dropping a deep trie.
                idx.insert(&plus, 1);
                drop(idx);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    // ---- properties -------------------------------------------------------

    fn level(with_wildcards: bool) -> impl Strategy<Value = &'static str> {
        let mut levels = vec!["", "$a", "a", "b"];
        if with_wildcards {
            levels.extend(["+", "#"]);
        }
        prop::sample::select(levels)
    }

    /// Filters over a small level alphabet; some are invalid (`#` not last),
    /// which the index must ignore just as `topic::matches` does.
    fn filter() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(level(true), 1..=4).prop_map(|l| l.join("/").into_bytes())
    }

    /// Topic names, occasionally with a (invalid) wildcard level.
    fn name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            9 => prop::collection::vec(level(false), 1..=5),
            1 => prop::collection::vec(level(true), 1..=5),
        ]
        .prop_map(|l| l.join("/").into_bytes())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Vec<u8>, u8),
        Remove(Vec<u8>, u8),
        RemoveWhere(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (filter(), 0..4u8).prop_map(|(f, d)| Op::Insert(f, d)),
            4 => (filter(), 0..4u8).prop_map(|(f, d)| Op::Remove(f, d)),
            1 => (0..4u8).prop_map(Op::RemoveWhere),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_agrees_with_naive(
            routes in prop::collection::vec((filter(), 0..6u8), 0..40),
            names in prop::collection::vec(name(), 1..20),
        ) {
            let mut idx = RouteIndex::new();
            for (f, d) in &routes {
                idx.insert(f, *d);
            }
            idx.check_invariants();
            for n in &names {
                let got = idx.matches(n);
                let unique: BTreeSet<u8> = got.iter().copied().collect();
                prop_assert_eq!(unique.len(), got.len(), "duplicates for {:?}", n);
                let naive: BTreeSet<u8> = routes
                    .iter()
                    .filter(|(f, _)| topic::matches(n, f))
                    .map(|(_, d)| *d)
                    .collect();
                prop_assert_eq!(unique, naive, "topic {:?}", String::from_utf8_lossy(n));
            }
        }

        #[test]
        fn operations_agree_with_model(ops in prop::collection::vec(op(), 0..80)) {
            let mut idx = RouteIndex::new();
            let mut model: HashSet<(Vec<u8>, u8)> = HashSet::new();
            for op in ops {
                match op {
                    Op::Insert(f, d) => {
                        let valid = topic::validate_filter(&f).is_ok();
                        let expected = valid && model.insert((f.clone(), d));
                        prop_assert_eq!(idx.insert(&f, d), expected);
                    }
                    Op::Remove(f, d) => {
                        let expected = model.remove(&(f.clone(), d));
                        prop_assert_eq!(idx.remove(&f, &d), expected);
                    }
                    Op::RemoveWhere(x) => {
                        let got: HashSet<(Vec<u8>, u8)> =
                            idx.remove_dests_where(|d| *d == x).into_iter().collect();
                        let expected: HashSet<(Vec<u8>, u8)> =
                            model.iter().filter(|(_, d)| *d == x).cloned().collect();
                        model.retain(|(_, d)| *d != x);
                        prop_assert_eq!(got, expected);
                    }
                }
                idx.check_invariants();
                prop_assert_eq!(idx.len(), model.len());
                let filters: BTreeSet<Vec<u8>> = model.iter().map(|(f, _)| f.clone()).collect();
                prop_assert_eq!(idx.filters(), filters.iter().cloned().collect::<Vec<_>>());
                for f in &filters {
                    let dests: BTreeSet<u8> = idx.dests(f).into_iter().collect();
                    let expected: BTreeSet<u8> =
                        model.iter().filter(|(g, _)| g == f).map(|(_, d)| *d).collect();
                    prop_assert_eq!(dests, expected);
                }
            }
            for (f, d) in model.drain() {
                prop_assert!(idx.remove(&f, &d));
            }
            idx.check_invariants();
            prop_assert!(idx.is_empty());
            prop_assert_eq!(idx.node_count(), 0);
            prop_assert!(idx.exact.is_empty());
            prop_assert!(idx.filters().is_empty());
        }
    }

    // ---- measurement ------------------------------------------------------

    /// xorshift64*: deterministic and dependency-free.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    fn rss_mib() -> String {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .map(|l| l.trim_start_matches("VmRSS:").trim().to_string())
            })
            .unwrap_or_else(|| "?".into())
    }

    /// Builds 1,000,000 exact routes `dev/<0..100>/<0..100>/<0..10>/<0..10>`
    /// plus 100,000 distinct wildcard filters over `dev/<0..span>/<0..span>/..` (each
    /// level literal or `+`, a third cut short by `#`), then times 1,000,000
    /// matches of random exact topics. Every route has its own destination,
    /// so the result size is the number of matching routes. A small `span`
    /// makes the wildcards overlap the topics heavily.
    fn measure(span: u64) {
        use std::time::Instant;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut idx: RouteIndex<u32> = RouteIndex::new();
        let mut next_dest = 0u32;

        let start = Instant::now();
        for a in 0..100 {
            for b in 0..100 {
                for c in 0..10 {
                    for d in 0..10 {
                        idx.insert(format!("dev/{a}/{b}/{c}/{d}").as_bytes(), next_dest);
                        next_dest += 1;
                    }
                }
            }
        }
        let exact_time = start.elapsed();

        let start = Instant::now();
        let mut wildcard = 0;
        while wildcard < 100_000 {
            let mut levels = vec!["dev".to_string()];
            for s in [span, span, 10, 10] {
                levels.push(if rng.below(4) == 0 {
                    "+".into()
                } else {
                    rng.below(s).to_string()
                });
            }
            if rng.below(3) == 0 {
                levels.truncate(1 + rng.below(4) as usize);
                levels.push("#".into());
            }
            let filter = levels.join("/");
            // Distinct filters, so a popular one like `dev/#` is not
            // counted thousands of times.
            if filter.contains(['+', '#']) && idx.dests(filter.as_bytes()).is_empty() {
                idx.insert(filter.as_bytes(), next_dest);
                next_dest += 1;
                wildcard += 1;
            }
        }
        let wildcard_time = start.elapsed();
        assert_eq!(idx.len(), 1_100_000);

        let topics: Vec<Vec<u8>> = (0..1_000_000)
            .map(|_| {
                let (a, b, c, d) = (rng.below(100), rng.below(100), rng.below(10), rng.below(10));
                format!("dev/{a}/{b}/{c}/{d}").into_bytes()
            })
            .collect();
        let start = Instant::now();
        let mut total = 0usize;
        for t in &topics {
            total += idx.matches(t).len();
        }
        let match_time = start.elapsed();
        assert!(total >= topics.len());

        // Topics outside every route's namespace: the floor cost.
        let misses: Vec<Vec<u8>> = topics.iter().map(|t| [b"app", &t[3..]].concat()).collect();
        let start = Instant::now();
        let none: usize = misses.iter().map(|t| idx.matches(t).len()).sum();
        let miss_time = start.elapsed();
        assert_eq!(none, 0);

        println!(
            "span {span}: build 1,000,000 exact routes {:?}, 100,000 wildcard filters {:?} \
             ({} trie nodes); 1,000,000 matches {:?} = {:.0} ns/match, {:.1} routes/match; \
             non-matching topics {:.0} ns/match; RSS {}",
            exact_time,
            wildcard_time,
            idx.node_count(),
            match_time,
            match_time.as_nanos() as f64 / topics.len() as f64,
            total as f64 / topics.len() as f64,
            miss_time.as_nanos() as f64 / misses.len() as f64,
            rss_mib()
        );
    }

    /// `cargo test --release -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn measure_large_index() {
        measure(1000);
        measure(100);
    }
}
