//! An in-memory index of the branch history (every commit reachable from the
//! head), built once per head change off the request path.
//!
//! With it, "is R an ancestor of head" is one hash lookup, and "how many
//! commits is R behind head" (`git rev-list --count R..head`) is a walk over
//! the commits between R and head only, ordered by generation number, so its
//! cost is proportional to how far behind R is, not to the history's size.

use std::cell::RefCell;
use std::collections::{BinaryHeap, HashMap};

use gix::ObjectId;

/// One commit of the branch history.
#[derive(Clone, Debug)]
struct Node {
    /// Committer time, seconds since the epoch.
    time: i64,
    /// Topological level: 1 for a root, otherwise 1 + the highest parent's.
    generation: u32,
    /// Range in `HistoryIndex::parents`.
    parents_start: u32,
    parents_len: u32,
}

/// Why an index could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot read commit {id}: {reason}")]
pub(crate) struct HistoryError {
    pub(crate) id: ObjectId,
    pub(crate) reason: String,
}

/// Every commit reachable from `head`, with parents as dense indices.
#[derive(Clone, Debug)]
pub(crate) struct HistoryIndex {
    head: ObjectId,
    ids: HashMap<ObjectId, u32>,
    nodes: Vec<Node>,
    parents: Vec<u32>,
}

/// How an index was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BuildKind {
    /// The previous index was extended with the new commits only.
    Extended,
    /// Built from scratch (first build, or the previous head is not an
    /// ancestor of the new one: the history was rewritten).
    Full,
}

const FLAG_HEAD: u8 = 1;
const FLAG_REV: u8 = 2;

thread_local! {
    /// Per-thread scratch flags for `behind_count`, reset after each use.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl HistoryIndex {
    /// Builds the index of `head`'s history. When `base` is given and its
    /// head is an ancestor of `head`, only the new commits are read.
    pub(crate) fn build(
        repo: &gix::Repository,
        head: ObjectId,
        base: Option<&HistoryIndex>,
    ) -> Result<(HistoryIndex, BuildKind), HistoryError> {
        if let Some(base) = base {
            if base.head == head {
                return Ok((base.clone(), BuildKind::Extended));
            }
            if let Some(extended) = Self::extend(repo, head, base)? {
                return Ok((extended, BuildKind::Extended));
            }
        }
        let empty = HistoryIndex {
            head,
            ids: HashMap::new(),
            nodes: Vec::new(),
            parents: Vec::new(),
        };
        let built = Self::extend(repo, head, &empty)?.ok_or_else(|| HistoryError {
            id: head,
            reason: "internal: empty base not reached".into(),
        })?;
        Ok((built, BuildKind::Full))
    }

    /// Adds the commits of `head` that `base` lacks. Returns `None` when
    /// `base.head` is not an ancestor of `head` (unless `base` is empty).
    fn extend(
        repo: &gix::Repository,
        head: ObjectId,
        base: &HistoryIndex,
    ) -> Result<Option<HistoryIndex>, HistoryError> {
        let base_len = base.nodes.len();
        // New commits, in discovery order; their index is base_len + position.
        let mut new_ids: HashMap<ObjectId, u32> = HashMap::new();
        let mut new_nodes: Vec<(ObjectId, i64, Vec<ObjectId>)> = Vec::new();
        let mut reached_base_head = base_len == 0;
        if base.ids.contains_key(&head) {
            // The head moved back to an older commit: a rewrite.
            return Ok(None);
        }
        new_ids.insert(head, base_len as u32);
        new_nodes.push((head, 0, Vec::new()));
        let mut cursor = 0usize;
        // Breadth-first over new commits; `cursor` walks `new_nodes`.
        while cursor < new_nodes.len() {
            let id = new_nodes[cursor].0;
            let (time, parent_ids) = read_commit(repo, id)?;
            for parent in &parent_ids {
                if base.ids.contains_key(parent) {
                    if *parent == base.head {
                        reached_base_head = true;
                    }
                    continue;
                }
                if !new_ids.contains_key(parent) {
                    let idx = (base_len + new_nodes.len()) as u32;
                    new_ids.insert(*parent, idx);
                    new_nodes.push((*parent, 0, Vec::new()));
                }
            }
            new_nodes[cursor].1 = time;
            new_nodes[cursor].2 = parent_ids;
            cursor += 1;
        }
        if !reached_base_head {
            return Ok(None);
        }
        // Capacities are rounded up to powers of two, so the index built at
        // each new head asks the allocator for the same block sizes as the
        // last one until the history doubles, and reuses the blocks the old
        // index frees. Exact sizes (a clone, then a push that doubles it)
        // ask for a little more at every head: over a long run that leaves
        // a trail of freed blocks too small for the next index.
        let total = base_len + new_nodes.len();
        let new_parents: usize = new_nodes.iter().map(|n| n.2.len()).sum();
        let mut nodes = Vec::with_capacity(total.next_power_of_two());
        nodes.extend_from_slice(&base.nodes);
        let mut parents =
            Vec::with_capacity((base.parents.len() + new_parents).next_power_of_two());
        parents.extend_from_slice(&base.parents);
        // A hash table's own capacity already grows by doubling.
        let mut ids = base.ids.clone();
        ids.reserve(new_nodes.len());
        let mut index = HistoryIndex {
            head,
            ids,
            nodes,
            parents,
        };
        for (id, time, parent_ids) in &new_nodes {
            let start = index.parents.len() as u32;
            for p in parent_ids {
                let idx = match base.ids.get(p).or_else(|| new_ids.get(p)) {
                    Some(i) => *i,
                    None => {
                        return Err(HistoryError {
                            id: *p,
                            reason: "parent missing from the walk".into(),
                        });
                    }
                };
                index.parents.push(idx);
            }
            index.ids.insert(*id, index.nodes.len() as u32);
            index.nodes.push(Node {
                time: *time,
                generation: 0,
                parents_start: start,
                parents_len: parent_ids.len() as u32,
            });
        }
        index.compute_generations(base_len);
        Ok(Some(index))
    }

    /// Fills `generation` for nodes `from..` (earlier ones are already set).
    fn compute_generations(&mut self, from: usize) {
        let mut stack: Vec<u32> = Vec::new();
        for start in from..self.nodes.len() {
            if self.nodes[start].generation != 0 {
                continue;
            }
            stack.push(start as u32);
            while let Some(&top) = stack.last() {
                let node = &self.nodes[top as usize];
                if node.generation != 0 {
                    stack.pop();
                    continue;
                }
                let range =
                    node.parents_start as usize..(node.parents_start + node.parents_len) as usize;
                let mut max = 0u32;
                let mut pending = false;
                for &p in &self.parents[range] {
                    let g = self.nodes[p as usize].generation;
                    if g == 0 {
                        stack.push(p);
                        pending = true;
                    } else {
                        max = max.max(g);
                    }
                }
                if !pending {
                    self.nodes[top as usize].generation = max.saturating_add(1);
                    stack.pop();
                }
            }
        }
    }

    pub(crate) fn head(&self) -> ObjectId {
        self.head
    }

    /// Number of commits in the branch history.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether `id` is the head or one of its ancestors.
    pub(crate) fn contains(&self, id: &ObjectId) -> bool {
        self.ids.contains_key(id)
    }

    /// Committer time (seconds) of a commit of the branch history.
    pub(crate) fn commit_time(&self, id: &ObjectId) -> Option<i64> {
        self.ids.get(id).map(|&i| self.nodes[i as usize].time)
    }

    /// `git rev-list --count <id>..<head>`, or `None` when `id` is not in the
    /// branch history.
    pub(crate) fn behind_count(&self, id: &ObjectId) -> Option<u64> {
        let rev = *self.ids.get(id)?;
        let head = *self.ids.get(&self.head)?;
        if rev == head {
            return Some(0);
        }
        Some(SCRATCH.with(|scratch| {
            let mut flags = scratch.borrow_mut();
            if flags.len() < self.nodes.len() {
                flags.resize(self.nodes.len(), 0);
            }
            let mut touched: Vec<u32> = Vec::new();
            let count = self.paint(&mut flags, &mut touched, head, rev);
            for t in touched {
                flags[t as usize] = 0;
            }
            count
        }))
    }

    /// Walks from `head` and `rev` in decreasing generation order, counting
    /// commits reached from `head` only; stops when every queued commit is
    /// also reachable from `rev`.
    fn paint(&self, flags: &mut [u8], touched: &mut Vec<u32>, head: u32, rev: u32) -> u64 {
        let mut queue: BinaryHeap<(u32, u32)> = BinaryHeap::new();
        let mut interesting_queued: usize = 1;
        flags[head as usize] = FLAG_HEAD;
        flags[rev as usize] = FLAG_REV;
        touched.push(head);
        touched.push(rev);
        queue.push((self.nodes[head as usize].generation, head));
        queue.push((self.nodes[rev as usize].generation, rev));
        let mut count = 0u64;
        while interesting_queued > 0 {
            let Some((_, idx)) = queue.pop() else { break };
            let f = flags[idx as usize];
            let propagate = if f & FLAG_REV != 0 {
                FLAG_REV
            } else {
                interesting_queued -= 1;
                count += 1;
                FLAG_HEAD
            };
            let node = &self.nodes[idx as usize];
            let range =
                node.parents_start as usize..(node.parents_start + node.parents_len) as usize;
            for &p in &self.parents[range] {
                let pf = flags[p as usize];
                if pf == 0 {
                    flags[p as usize] = propagate;
                    touched.push(p);
                    queue.push((self.nodes[p as usize].generation, p));
                    if propagate == FLAG_HEAD {
                        interesting_queued += 1;
                    }
                } else if propagate == FLAG_REV && pf & FLAG_REV == 0 {
                    // Queued as interesting, now known to be reachable from rev.
                    flags[p as usize] = pf | FLAG_REV;
                    interesting_queued -= 1;
                }
            }
        }
        count
    }
}

/// Reads a commit's committer time and parents from the object database.
fn read_commit(repo: &gix::Repository, id: ObjectId) -> Result<(i64, Vec<ObjectId>), HistoryError> {
    let err = |reason: String| HistoryError { id, reason };
    let commit = repo.find_commit(id).map_err(|e| err(e.to_string()))?;
    let decoded = commit.decode().map_err(|e| err(e.to_string()))?;
    let time = decoded.time().map_err(|e| err(e.to_string()))?.seconds;
    Ok((time, decoded.parents().collect()))
}
