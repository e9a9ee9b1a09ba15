//! What the Vulkan backend keeps between dispatches so a repeat shape costs one submit:
//! recorded command buffers with their persistent buffers ("slots"), buffers pooled by
//! size class, and timestamp query pools.
//!
//! Design note. A slot is everything one dispatch of one shape needs: the device
//! buffers (and, where device memory is not host visible, upload and readback staging
//! buffers), a descriptor set over them, a two-query timestamp pool and a primary
//! command buffer recorded once with `MultipleSubmit` (upload → timestamp → dispatch →
//! timestamp → readback). A slot is owned by exactly one dispatch at a time: it is
//! taken out of the cache before its inputs are written and put back only after its
//! fence has signalled and its outputs were read, so two jobs of the same shape in
//! flight at once simply use two slots. The cache is bounded twice — by the number of
//! idle slots and by the bytes they and the buffer pool hold — and evicts the least
//! recently returned slot first; an evicted slot's buffers go back to the size-class
//! pool while it has room. This module holds no device handles beyond those resources
//! and never submits work.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use vulkano::buffer::Subbuffer;
use vulkano::command_buffer::PrimaryAutoCommandBuffer;
use vulkano::descriptor_set::DescriptorSet;
use vulkano::query::QueryPool;
use vulkano::sync::fence::Fence;

use crate::policy::{decide_command_reuse, CommandReuseDecision, CommandReuseInputs};

/// What a pooled buffer is for; buffers of different roles live in different memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Role {
    /// Device-local storage buffer (filled by copies from an upload buffer).
    Device,
    /// Device-local and host-visible storage buffer, written and read in place.
    Unified,
    /// Host-visible, host-cached system memory bound to the kernel as a storage buffer
    /// (the GPU reads and writes it over PCIe): small slots written and read in place,
    /// with no staging copies and no uncached reads.
    Host,
    /// Host-visible source of uploads.
    Upload,
    /// Host-visible destination of readbacks.
    Readback,
}

/// A buffer from the pool: its role and its size class (the buffer's size).
#[derive(Debug, Clone)]
pub(super) struct Pooled {
    pub(super) role: Role,
    pub(super) buffer: Subbuffer<[u8]>,
}

impl Pooled {
    fn bytes(&self) -> u64 {
        self.buffer.size()
    }
}

/// The smallest size class that holds `bytes`: a power of two, at least 256 bytes.
pub(super) fn size_class(bytes: u64) -> u64 {
    bytes.max(256).next_power_of_two()
}

/// What identifies a shape: a slot recorded for one key replays for any job of the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SlotKey {
    pub(super) kernel: u64,
    pub(super) family: u32,
    /// Per binding: its byte length and whether it is uploaded (`true`) or zero-filled.
    pub(super) buffers: Vec<(u64, bool)>,
    pub(super) workgroups: [u32; 3],
    pub(super) push_constants: Vec<u8>,
    /// Whether the slot writes timestamps around the kernel.
    pub(super) timed: bool,
    /// How many times the kernel is dispatched back to back between the timestamps:
    /// 1 for every job of the engine; more only for
    /// [`VulkanBackend::dispatch_repeated`](super::VulkanBackend::dispatch_repeated).
    pub(super) repeats: u32,
}

/// One binding of a slot.
#[derive(Debug)]
pub(super) struct SlotBinding {
    /// The binding's length in bytes as the job gave it.
    pub(super) len: u64,
    /// The storage buffer the shader sees.
    pub(super) device: Pooled,
    /// Staging source of the contents (staged devices, uploaded bindings only).
    pub(super) upload: Option<Pooled>,
    /// Staging destination of the results (staged devices, written bindings only).
    pub(super) readback: Option<Pooled>,
}

/// A recorded dispatch with its resources, replayable for any job of its key.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) command: Arc<PrimaryAutoCommandBuffer>,
    pub(super) bindings: Vec<SlotBinding>,
    /// The descriptor set over the device buffers, which the recording binds (a group
    /// recording, `overlap.rs`, binds it again).
    pub(super) set: Arc<DescriptorSet>,
    /// Two timestamp queries (before, after); `None` where the family has none.
    pub(super) queries: Option<Arc<QueryPool>>,
    /// Signalled when a submission of `command` has finished; unsignalled while the
    /// slot is idle.
    pub(super) fence: Arc<Fence>,
}

impl Slot {
    fn bytes(&self) -> u64 {
        self.bindings
            .iter()
            .flat_map(|b| {
                std::iter::once(&b.device)
                    .chain(&b.upload)
                    .chain(&b.readback)
            })
            .map(Pooled::bytes)
            .sum()
    }

    fn into_parts(self) -> (Vec<Pooled>, Option<Arc<QueryPool>>) {
        let buffers = self
            .bindings
            .into_iter()
            .flat_map(|b| std::iter::once(b.device).chain(b.upload).chain(b.readback))
            .collect();
        (buffers, self.queries)
    }
}

/// Counters of what reuse saved, per device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReuseStats {
    /// Command buffers recorded (a new shape, or a shape whose slots were all busy).
    pub recorded: u64,
    /// Dispatches that replayed an already-recorded command buffer.
    pub replayed: u64,
    /// Buffers allocated from the device.
    pub buffers_allocated: u64,
    /// Buffers taken from the size-class pool instead.
    pub buffers_reused: u64,
    /// Of the recorded command buffers, those whose buffers the host writes and reads
    /// in place (unified memory, or a small slot in host or BAR memory): no staging
    /// copies.
    pub in_place: u64,
    /// Of the recorded command buffers, those launched plainly: D4 (command reuse)
    /// said a shape seen this rarely does not pay back keeping its recording, so the
    /// slot was taken apart after its one run (its buffers went to the pool).
    pub plain_launches: u64,
    /// Recording a slot's command buffer, ns (a moving average; 0 before the first).
    pub record_ns: u64,
    /// D3 (copy overlap): jobs of a call of several whose staged uploads (copies into
    /// their device buffers) ran beside the kernels of the call's earlier jobs, in one
    /// command buffer ([`Backend::dispatch_overlapped`](crate::backend::Backend::dispatch_overlapped)).
    pub uploads_overlapped: u64,
    /// Jobs of a call of several whose staged uploads waited for the kernels of the
    /// call's earlier jobs (each job submitted on its own: D3 said serialise, or
    /// [`VulkanOptions::overlap_uploads`](super::VulkanOptions::overlap_uploads) is off).
    pub uploads_serialised: u64,
    /// Group command buffers recorded for overlapped uploads.
    pub overlap_groups: u64,
    /// Submitting a recorded command buffer, ns (a moving average; 0 before the first).
    pub submit_ns: u64,
}

/// How many distinct shapes a device remembers having seen (for D4's repeat count);
/// past it the counts start over.
const MAX_SEEN_SHAPES: usize = 4096;

/// A moving average with weight 1/4 for the new sample (the first sample is taken as is).
fn ema(old: u64, new: u64) -> u64 {
    if old == 0 {
        new
    } else {
        old - old / 4 + new / 4
    }
}

/// The per-device cache of idle slots, pooled buffers and query pools.
#[derive(Debug)]
pub(super) struct ReuseCache {
    max_slots: usize,
    budget_bytes: u64,
    idle: HashMap<SlotKey, Vec<(u64, Slot)>>,
    /// Idle slots by the stamp of their return, oldest first.
    order: BTreeMap<u64, SlotKey>,
    next_stamp: u64,
    idle_slot_bytes: u64,
    buffers: HashMap<(Role, u64), Vec<Subbuffer<[u8]>>>,
    pooled_bytes: u64,
    query_pools: Vec<Arc<QueryPool>>,
    /// How many times each shape was dispatched (at most [`MAX_SEEN_SHAPES`] shapes).
    seen: HashMap<SlotKey, u32>,
    pub(super) stats: ReuseStats,
}

impl ReuseCache {
    pub(super) fn new(max_slots: usize, budget_bytes: u64) -> Self {
        ReuseCache {
            max_slots,
            budget_bytes,
            idle: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            idle_slot_bytes: 0,
            buffers: HashMap::new(),
            pooled_bytes: 0,
            query_pools: Vec::new(),
            seen: HashMap::new(),
            stats: ReuseStats::default(),
        }
    }

    /// An idle slot recorded for `key`, the most recently returned one.
    pub(super) fn take_slot(&mut self, key: &SlotKey) -> Option<Slot> {
        let slots = self.idle.get_mut(key)?;
        let (stamp, slot) = slots.pop()?;
        if slots.is_empty() {
            self.idle.remove(key);
        }
        self.order.remove(&stamp);
        self.idle_slot_bytes -= slot.bytes();
        self.stats.replayed += 1;
        Some(slot)
    }

    /// Returns a slot after its dispatch finished, evicting old slots over the limits.
    pub(super) fn put_slot(&mut self, key: SlotKey, slot: Slot) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.idle_slot_bytes += slot.bytes();
        self.order.insert(stamp, key.clone());
        self.idle.entry(key).or_default().push((stamp, slot));
        while self.order.len() > self.max_slots {
            self.evict_oldest(true);
        }
        while self.idle_slot_bytes + self.pooled_bytes > self.budget_bytes {
            if let Some(list) = self.buffers.values_mut().find(|l| !l.is_empty()) {
                if let Some(b) = list.pop() {
                    self.pooled_bytes -= b.size();
                }
            } else if !self.evict_oldest(false) {
                break;
            }
        }
    }

    /// Drops the least recently returned idle slot; its buffers go to the pool when
    /// `pool` is set and they fit the budget. False when there was none.
    fn evict_oldest(&mut self, pool: bool) -> bool {
        let Some((stamp, key)) = self.order.pop_first() else {
            return false;
        };
        let Some(slots) = self.idle.get_mut(&key) else {
            return false;
        };
        let Some(pos) = slots.iter().position(|(s, _)| *s == stamp) else {
            return false;
        };
        let (_, slot) = slots.remove(pos);
        if slots.is_empty() {
            self.idle.remove(&key);
        }
        self.idle_slot_bytes -= slot.bytes();
        let (buffers, queries) = slot.into_parts();
        if let Some(q) = queries {
            self.query_pools.push(q);
        }
        if pool {
            for b in buffers {
                self.put_buffer(b);
            }
        }
        true
    }

    /// Puts a buffer in the size-class pool if it fits the budget (else it is freed).
    pub(super) fn put_buffer(&mut self, b: Pooled) {
        let bytes = b.bytes();
        if self.idle_slot_bytes + self.pooled_bytes + bytes <= self.budget_bytes {
            self.pooled_bytes += bytes;
            self.buffers
                .entry((b.role, bytes))
                .or_default()
                .push(b.buffer);
        }
    }

    /// A pooled buffer of `role` and size class `class`, if one is idle.
    pub(super) fn take_buffer(&mut self, role: Role, class: u64) -> Option<Pooled> {
        let buffer = self.buffers.get_mut(&(role, class))?.pop()?;
        self.pooled_bytes -= class;
        self.stats.buffers_reused += 1;
        Some(Pooled { role, buffer })
    }

    /// Counts a dispatch of `key`: how many times its shape has now been dispatched.
    pub(super) fn note_seen(&mut self, key: &SlotKey) -> u32 {
        if let Some(n) = self.seen.get_mut(key) {
            *n = n.saturating_add(1);
            return *n;
        }
        if self.seen.len() >= MAX_SEEN_SHAPES {
            self.seen.clear();
        }
        self.seen.insert(key.clone(), 1);
        1
    }

    /// Records what recording a command buffer took.
    pub(super) fn note_record(&mut self, ns: u64) {
        self.stats.record_ns = ema(self.stats.record_ns, ns);
    }

    /// Records what submitting a recorded command buffer took.
    pub(super) fn note_submit(&mut self, ns: u64) {
        self.stats.submit_ns = ema(self.stats.submit_ns, ns);
    }

    /// D4 for a shape dispatched `repeat` times so far, from the measured costs: a
    /// plain launch records and submits, a replay only submits, keeping a recording
    /// costs its recording once.
    pub(super) fn command_reuse(&self, repeat: u32) -> CommandReuseDecision {
        let (record, submit) = (self.stats.record_ns.max(1), self.stats.submit_ns);
        decide_command_reuse(CommandReuseInputs {
            repeat_count: repeat,
            per_launch_overhead_ns: record.saturating_add(submit),
            record_overhead_ns: record,
            replay_overhead_ns: submit,
        })
    }

    /// Takes apart a slot whose recording is not kept (a plain launch): its buffers go
    /// to the pool, its timestamp queries to the spare pools.
    pub(super) fn retire_slot(&mut self, slot: Slot) {
        self.stats.plain_launches += 1;
        let (buffers, queries) = slot.into_parts();
        if let Some(q) = queries {
            self.query_pools.push(q);
        }
        for b in buffers {
            self.put_buffer(b);
        }
    }

    /// An idle two-query timestamp pool, if one is left from an evicted slot.
    pub(super) fn take_query_pool(&mut self) -> Option<Arc<QueryPool>> {
        self.query_pools.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_are_powers_of_two_of_at_least_256_bytes() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 512);
        assert_eq!(size_class(3 << 20), 4 << 20);
    }
}
