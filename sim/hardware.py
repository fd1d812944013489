"""The hardware every architecture model shares: CPU cores, NIC links, disks, memory and page cache.

Each piece is a plain object over one SimPy environment, built for speed: a CPU
burst costs one SimPy event when a core is free, a NIC flow costs O(log n) and no
event of its own, a disk read one event. Utilisation is kept as busy seconds so
the run loop can difference it over the measurement window.
"""
from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque

import simpy
from simpy.events import Timeout



class CPU:
    """`cores` identical cores serving bursts of schedulable entities in FIFO order.

    An entity is any hashable object (a process or a kernel thread of a model).
    A core that changes entity pays `switch_cost` seconds (a kernel context switch).

    With `quota` < 1 the cores are under a CFS bandwidth limit (cpu.cfs_quota_us):
    in each `period` the bursts may use `quota x period x cores` seconds of CPU, at
    full speed; a burst that finds the period's share spent waits for the next
    period, one that spends it midway is cut there and goes on in the next. The
    share is booked when a burst starts (exact on one core, where bursts follow
    each other). `busy` stays CPU time; the wall time is what grows.
    """

    __slots__ = ("env", "cores", "switch_cost", "free", "last", "queue", "busy", "switches", "core_busy",
                 "_done", "_finish_core", "share", "period", "period_no", "left", "throttles", "cut")

    def __init__(self, env: simpy.Environment, cores: int, switch_cost: float, quota: float = 1.0,
                 period: float = 0.1):
        self.env = env
        self.cores = cores
        self.switch_cost = switch_cost
        self.free = list(range(cores - 1, -1, -1))
        self.last = [None] * cores
        self.queue: deque = deque()
        self.busy = 0.0
        self.switches = 0
        self.core_busy = [0.0] * cores  # busy seconds of each core (the bottleneck report)
        self._done = [None] * cores     # the event to fire when the core's burst ends, if queued
        self._finish_core = [self._finisher(core) for core in range(cores)]
        self.share = quota * period * cores if quota < 1.0 else 0.0   # 0: no limit
        self.period = period
        self.period_no = -1
        self.left = 0.0
        self.throttles = 0
        self.cut = -1.0                 # CPU seconds into the last burst booked where the quota ran out

    def wall(self, now: float, seconds: float) -> float:
        """Wall seconds from `now` until `seconds` of CPU have been had under the quota."""
        period, share = self.period, self.share
        k = int(now / period)
        if k > self.period_no:
            self.period_no, self.left = k, share
        t = now
        self.cut = -1.0
        while True:
            use = seconds if seconds < self.left else self.left
            self.left -= use
            seconds -= use
            t += use
            if seconds <= 0.0:
                return t - now
            self.throttles += 1
            if self.cut < 0.0:
                self.cut = t - now
            self.period_no += 1
            self.left = share
            start = self.period_no * period
            if start > t:
                t = start

    def _finisher(self, core):
        return lambda _ev: self._finish(core)

    def run(self, entity, seconds: float) -> simpy.Event:
        """An event that fires when `entity` has had `seconds` of CPU."""
        if self.free:
            return self._start(self.free.pop(), entity, seconds, None)
        done = simpy.Event(self.env)
        self.queue.append((entity, seconds, done))
        return done

    def _start(self, core, entity, seconds, done):
        asked = seconds
        if self.last[core] is not entity:
            self.last[core] = entity
            seconds += self.switch_cost
            self.switches += 1
        self.busy += seconds
        self.core_busy[core] += seconds
        self._done[core] = done
        if self.share:
            t = Timeout(self.env, self.wall(self.env.now, seconds))
            if self.cut >= 0.0:    # tell the model where its burst was cut (from the start it asked for)
                (done if done is not None else t).cut = self.cut - (seconds - asked)
        else:
            t = Timeout(self.env, seconds)
        t.callbacks.append(self._finish_core[core])
        return t

    def _finish(self, core):
        done = self._done[core]
        if self.queue:
            entity, seconds, nxt = self.queue.popleft()
            self._start(core, entity, seconds, nxt)
        else:
            self.free.append(core)
        if done is not None:        # the burst had waited in the queue: its waiters go on now, in this
            done._ok = True         # step, as they would had it started at once (what succeed() does,
            done._value = None      # without a second trip through the event heap)
            callbacks, done.callbacks = done.callbacks, None
            for callback in callbacks:
                callback(done)

    @property
    def runnable(self) -> int:
        return len(self.queue) + self.cores - len(self.free)


class Flow:
    """Bytes moving over a link; `on_done(arg)` is called when the last byte has left.

    While it waits for a place on a link with a queue limit, `finish` holds its bytes."""

    __slots__ = ("finish", "on_done", "arg", "live", "waiting")

    def __init__(self, finish, on_done, arg, waiting=False):
        self.finish = finish
        self.on_done = on_done
        self.arg = arg
        self.live = True
        self.waiting = waiting


class Link:
    """A NIC link whose bandwidth is shared fairly by the flows on it (fluid processor sharing).

    Virtual time `v` is the bytes each active flow has received so far; it grows at
    `rate / n`. A flow of b bytes started at virtual time v ends when v reaches
    v + b, so flows end in the order of their finish tags: a heap gives O(log n)
    per flow, with a single pending timer for the next departure.

    With `max_flows`, at most that many flows share the link; the others wait in
    arrival order and take the places that free up. That is a shaped link's queue
    (a qdisc with a byte limit) under TCP: each socket keeps about two frames in
    the queue (TCP small queues), so the queue holds the packets of a bounded
    number of flows; a socket whose packet finds it full is dropped locally and,
    with nothing in flight, waits for its probe timer, while the flows in flight
    keep their places by their ACKs. Shortest-first finishing, which fair sharing
    among all flows gives, does not happen there (docs/calibration.md).
    """

    __slots__ = ("env", "rate", "v", "t", "n", "heap", "seq", "timer_at", "timer", "busy", "bytes", "_busy_since",
                 "max_flows", "waiting")

    def __init__(self, env: simpy.Environment, bytes_per_s: float, max_flows: int = 0):
        self.env = env
        self.rate = bytes_per_s
        self.max_flows = max_flows
        self.waiting: deque = deque()
        self.v = 0.0
        self.t = 0.0
        self.n = 0
        self.heap: list = []
        self.seq = 0
        self.timer_at = None
        self.timer = None      # the pending wake-up
        self.busy = 0.0
        self.bytes = 0.0
        self._busy_since = 0.0

    def _advance(self, now):
        if self.n:
            self.v += (now - self.t) * self.rate / self.n
        self.t = now

    def send(self, nbytes: float, on_done, arg) -> Flow:
        now = self.env._now
        n = self.n
        if n:
            self.v += (now - self.t) * self.rate / n
        else:
            self.v = 0.0  # re-base while idle: keeps the tags small
            self._busy_since = now
        self.t = now
        if self.max_flows and n >= self.max_flows:    # no place: it waits for one
            flow = Flow(nbytes, on_done, arg, True)
            self.waiting.append(flow)
            self.bytes += nbytes
            return flow
        flow = Flow(self.v + nbytes, on_done, arg)
        self.seq += 1
        heapq.heappush(self.heap, (flow.finish, self.seq, flow))
        self.n = n + 1
        self.bytes += nbytes
        self._schedule(now)
        return flow

    def cancel(self, flow: Flow) -> None:
        """Stop a flow (its connection was reset); its remaining bytes are never sent."""
        if flow.live and flow.waiting:
            flow.live = False
            self.bytes -= flow.finish
        elif flow.live:
            now = self.env.now
            self._advance(now)
            flow.live = False
            self.bytes -= max(0.0, flow.finish - self.v)
            self.n -= 1
            if self.waiting:
                self._admit()
            if self.n == 0:
                self.busy += now - self._busy_since
                self.heap.clear()
            else:                      # the others speed up: the next departure may come sooner
                self._schedule(now)

    def _admit(self):
        """Waiting flows take the places that are free, in arrival order (v is current)."""
        waiting, heap = self.waiting, self.heap
        while waiting and self.n < self.max_flows:
            flow = waiting.popleft()
            if flow.live:
                flow.waiting = False
                flow.finish += self.v
                self.seq += 1
                heapq.heappush(heap, (flow.finish, self.seq, flow))
                self.n += 1

    def _schedule(self, now):
        heap = self.heap
        while heap and not heap[0][2].live:
            heapq.heappop(heap)
        if not heap:
            return
        left = heap[0][0] - self.v
        due = now + left * self.n / self.rate if left > 0.0 else now
        if self.timer_at is None or due < self.timer_at:
            if self.timer is not None:
                self.timer.callbacks = ()  # superseded: it will fire as a no-op
            self.timer_at = due
            self.timer = self.env.call_later(due - now, self._wake)

    def _wake(self, ev):
        """The pending wake-up (a superseded one fires as a no-op): the flows due now leave."""
        now = self.env.now
        self.timer_at = None
        self.timer = None
        if not self.n:
            return
        self._advance(now)
        heap = self.heap
        # bytes that take less than the clock's resolution count as sent
        eps = 1e-9 * (1.0 + self.v) + self.rate / self.n * 4e-16 * max(1.0, now)
        done = []
        while heap and (heap[0][0] <= self.v + eps or not heap[0][2].live):
            flow = heapq.heappop(heap)[2]
            if flow.live:
                flow.live = False
                self.n -= 1
                done.append(flow)
        if self.waiting:
            self._admit()
        if self.n == 0:
            self.busy += now - self._busy_since
            heap.clear()
        else:
            self._schedule(now)
        for flow in done:
            flow.on_done(flow.arg)

    def busy_time(self, now) -> float:
        return self.busy + (now - self._busy_since if self.n else 0.0)


# ext3 with 4 KB blocks, the study's file system (Linux 2.6.16): the inode maps a file's first 12
# blocks itself; the next 1,024 are mapped by an indirect block, and beyond those a double-indirect
# block maps 1,024 more indirect blocks (fs/ext3/inode.c, EXT3_NDIR_BLOCKS = 12).
FS_BLOCK = 4096
FS_DIRECT_BLOCKS = 12
FS_PER_BLOCK = FS_BLOCK // 4      # block numbers held by one indirect block


def indirect_blocks(nbytes: float) -> int:
    """Indirect (and double-indirect) blocks ext3 reads to map a file of `nbytes` bytes."""
    beyond = -(-int(nbytes) // FS_BLOCK) - FS_DIRECT_BLOCKS
    if beyond <= 0:
        return 0
    if beyond <= FS_PER_BLOCK:
        return 1
    return 2 + -(-(beyond - FS_PER_BLOCK) // FS_PER_BLOCK)


class Disk:
    """FIFO disks: each read pays positioning time per readahead window plus bytes over bandwidth.

    Files are striped over the disks by index. Reading a missed file happens in
    readahead windows, each a separate request that pays a positioning time
    (sendfile faults pages in as it sends, so the head moves between windows).

    With `indirect` (ext3: `hardware.file_system = "ext3"`), a file beyond 12 blocks (48 KB) costs two
    more positionings per indirect block. Readahead maps the window's pages one by
    one (mpage_readpages); at block 12, ext3_get_block reads the indirect block
    synchronously (sb_bread) before the request holding blocks 0-11 has been sent,
    since that request is sent only when the next block turns out not to follow it.
    ext3 allocates the indirect block right after block 11, so the disk first
    positions for the indirect block, then has to wait for blocks 0-11, which have
    just passed under the head, to come round again: nearly a full turn (6 ms at
    10,000 rpm), counted here as one more positioning; blocks 12 on follow the
    indirect block. The indirect block sits in the block device's page cache and is
    touched only when the file's data is read from disk, that is on the file's
    misses; under the page cache's LRU the file's data was evicted, so everything
    touched before the data's last hit was evicted first, the indirect block with
    it: it is read on every miss. (A file system with extents, ext4 on, maps such
    files from the inode: `indirect=False`, `file_system = "extents"`.)
    """

    __slots__ = ("env", "seek", "rate", "window", "free_at", "busy", "reads", "indirect", "meta_reads")

    def __init__(self, env, disks: int, seek_s: float, bytes_per_s: float, readahead_bytes: float,
                 indirect: bool = True):
        self.env = env
        self.seek = seek_s
        self.rate = bytes_per_s
        self.window = readahead_bytes
        self.free_at = [0.0] * disks
        self.busy = 0.0
        self.reads = 0
        self.indirect = indirect
        self.meta_reads = 0

    def service_time(self, nbytes: float) -> float:
        windows = max(1, -(-int(nbytes) // int(self.window)))
        if self.indirect and nbytes > FS_DIRECT_BLOCKS * FS_BLOCK:
            meta = indirect_blocks(nbytes)    # each: its own read, and the data before it comes round again
            return (windows + 2 * meta) * self.seek + (nbytes + meta * FS_BLOCK) / self.rate
        return windows * self.seek + nbytes / self.rate

    def read(self, file: int, nbytes: float) -> simpy.Event:
        now = self.env.now
        d = file % len(self.free_at)
        s = self.service_time(nbytes)
        end = max(now, self.free_at[d]) + s
        self.free_at[d] = end
        self.busy += s
        self.reads += 1
        if self.indirect:
            self.meta_reads += indirect_blocks(nbytes)
        return self.env.timeout(end - now)


class ThrottledDisk(Disk):
    """A fast disk behind Linux's blkio read throttle (blk-throttle), as the disk case runs it.

    The throttle is a rate limit, not a service time: each slice (100 ms on a rotational
    queue) allows iops x slice reads and bps x slice bytes; a read within what is left of
    the slice goes to the device at once and takes the device's own time (seek_s plus
    bytes at bytes_per_s); a read beyond it waits, in order, for the next slice. After an
    idle slice a new one starts at the next read. Every readahead window of a missed
    file is one read, queued together. `busy` is the share of the limits used (of reads or
    of bytes, whichever is more)."""

    __slots__ = ("cap_ios", "cap_bytes", "slice", "anchor", "used_ios", "used_bytes", "last", "iops", "bps",
                 "bytes")

    def __init__(self, env, disks, seek_s, bytes_per_s, readahead_bytes, iops, bps, slice_s):
        super().__init__(env, disks, seek_s, bytes_per_s, readahead_bytes, indirect=False)
        self.iops, self.bps, self.slice = iops, bps, slice_s
        self.cap_ios, self.cap_bytes = iops * slice_s, bps * slice_s
        self.anchor, self.used_ios, self.used_bytes, self.last = -1e18, 0.0, 0.0, 0.0
        self.bytes = 0.0

    def _dispatch(self, t: float, nbytes: float) -> float:
        """When a read of `nbytes` submitted at `t` leaves the throttle (after those before it).

        As blk-throttle: the slice started at `anchor` allows cap x (elapsed slices, rounded up)
        since then; whole slices that have passed are trimmed off with their allowance (what was
        not used is lost, what was overdrawn stays owed); a group that owes nothing starts afresh."""
        t = max(t, self.last)
        k = int((t - self.anchor) // self.slice)
        if k > 0:
            self.anchor += k * self.slice
            self.used_ios = max(0.0, self.used_ios - k * self.cap_ios)
            self.used_bytes = max(0.0, self.used_bytes - k * self.cap_bytes)
            if self.used_ios == 0.0 and self.used_bytes == 0.0:
                self.anchor = t
        self.used_ios += 1
        self.used_bytes += nbytes
        n = max(1, math.ceil(self.used_ios / self.cap_ios - 1e-12), math.ceil(self.used_bytes / self.cap_bytes - 1e-12))
        t = max(t, self.anchor + (n - 1) * self.slice)
        self.last = t
        return t

    def read(self, file: int, nbytes: float) -> simpy.Event:
        now = self.env.now
        left, end = nbytes, now
        while True:
            b = min(left, self.window)
            t = self._dispatch(now, b)
            end = max(end, t + self.seek + b / self.rate)
            self.reads += 1
            self.bytes += b
            left -= b
            if left <= 0:
                break
        # the share of the limits used: of reads or of bytes, whichever is more
        self.busy = max(self.reads / self.iops, self.bytes / self.bps if self.bps else 0.0)
        return self.env.timeout(end - now)


class PageCache:
    """An LRU over whole files, sized as memory less the kernel and the servers' footprint.

    A miss starts one disk read; whoever touches the same file meanwhile waits on
    that read instead of starting another.
    """

    __slots__ = ("env", "disk", "memory", "footprint", "lru", "used", "inflight", "hits", "misses")

    def __init__(self, env, disk: Disk, memory_bytes: float):
        self.env = env
        self.disk = disk
        self.memory = memory_bytes
        self.footprint = 0.0
        self.lru: OrderedDict = OrderedDict()
        self.used = 0.0
        self.inflight: dict = {}
        self.hits = 0
        self.misses = 0

    @property
    def capacity(self) -> float:
        return max(0.0, self.memory - self.footprint)

    def touch(self, file: int, nbytes: float):
        """None on a hit; on a miss the event of the disk read that brings the file in."""
        lru = self.lru
        if file in lru:
            lru.move_to_end(file)
            self.hits += 1
            return None
        return self._miss(file, nbytes)

    def _miss(self, file: int, nbytes: float):
        """The disk read that brings `file` in: a new one, or the one already under way."""
        self.misses += 1
        ev = self.inflight.get(file)
        if ev is None:
            ev = self.disk.read(file, nbytes)
            self.inflight[file] = ev
            ev.callbacks.append(lambda _e: self._insert(file, nbytes))
        return ev

    def _insert(self, file, nbytes):
        self.inflight.pop(file, None)
        if nbytes > self.capacity:
            return
        self.lru[file] = nbytes
        self.used += nbytes
        self.shrink()

    def shrink(self):
        cap = self.capacity
        lru = self.lru
        while self.used > cap and lru:
            _f, b = lru.popitem(last=False)
            self.used -= b

    def warm(self, files, sizes):
        """Fill the cache as a long-running server would find it: `files` best first, and the
        best placed as most recently used, so that they are the last to be evicted."""
        chosen = []
        lru = self.lru
        for f in files:
            b = float(sizes[f])
            if f not in lru and self.used + b <= self.capacity:
                chosen.append((int(f), b))
                self.used += b
        for f, b in reversed(chosen):
            lru[f] = b

    def clear(self):
        """Empty the cache (a model that warms it its own way starts from here)."""
        self.lru.clear()
        self.used = 0.0


class TwoListCache(PageCache):
    """Linux's page cache: an inactive and an active list over whole files (mm/swap.c, mm/vmscan.c).

    A file read in enters the head of the inactive list, marked referenced by the
    read itself; a touch while it is inactive and referenced promotes it to the
    active list (a touch while unreferenced only marks it), so a file is protected
    once it is touched twice before the inactive list's tail reaches it. Touches
    reorder neither list. Reclaim evicts from the inactive tail; before it, while
    the active list is more than `ratio` times the inactive one (`inactive_is_low`:
    ratio sqrt(10 x GB) of the two lists, 1 below 1 GB), the active tail is demoted
    to the inactive head, keeping its referenced mark, so a file still in use is
    promoted again at its next touch. With `refault`, an evicted file leaves a
    shadow holding the non-resident age (bytes evicted and activated so far); read
    in again within the active list's size of that age, it enters the active list
    at once (mm/workingset.c, Linux 3.15 on). `lru` maps each resident file to its
    state: 0 inactive, 1 inactive referenced, 2 active, 3 active referenced.
    """

    __slots__ = ("inactive", "active", "active_bytes", "refault", "age", "shadows", "rereads",
                 "promotions", "demotions", "refaults")

    def __init__(self, env, disk: Disk, memory_bytes: float, refault: bool = True):
        super().__init__(env, disk, memory_bytes)
        self.lru: dict = {}
        self.inactive: OrderedDict = OrderedDict()   # file -> bytes, head (newest) last
        self.active: OrderedDict = OrderedDict()
        self.active_bytes = 0.0
        self.refault = refault
        self.age = 0.0
        self.shadows: dict = {}
        self.rereads: set = set()    # files touched again while being read in
        self.promotions = 0
        self.demotions = 0
        self.refaults = 0

    def touch(self, file: int, nbytes: float):
        """None on a hit; on a miss the event of the disk read that brings the file in."""
        lru = self.lru
        state = lru.get(file)
        if state is not None:
            self.hits += 1
            if state == 1:
                self._activate(file)
            elif state != 3:
                lru[file] = state + 1
            return None
        if file in self.inflight:
            self.rereads.add(file)
        return self._miss(file, nbytes)

    def _activate(self, file):
        b = self.inactive.pop(file)
        self.active[file] = b
        self.active_bytes += b
        self.lru[file] = 2
        self.age += b
        self.promotions += 1

    def _insert(self, file, nbytes):
        self.inflight.pop(file, None)
        again = file in self.rereads
        if again:
            self.rereads.discard(file)
        shadow = self.shadows.pop(file, None) if self.refault else None
        if nbytes > self.capacity:
            return
        if again or (shadow is not None and self.age - shadow <= self.active_bytes):
            self.active[file] = nbytes
            self.active_bytes += nbytes
            self.lru[file] = 2 if again else 3
            self.age += nbytes
            if not again:
                self.refaults += 1
        else:
            self.inactive[file] = nbytes
            self.lru[file] = 1
        self.used += nbytes
        self.shrink()

    def ratio(self) -> int:
        """Active bytes allowed per inactive byte: `inactive_is_low` in mm/vmscan.c."""
        gb = int(self.used) >> 30
        return math.isqrt(10 * gb) if gb else 1

    def shrink(self):
        cap = self.capacity
        if self.used <= cap:
            return
        lru, inactive, active = self.lru, self.inactive, self.active
        ratio = self.ratio()
        while self.used > cap and lru:
            while active and self.active_bytes > ratio * (self.used - self.active_bytes):
                f, b = active.popitem(last=False)
                self.active_bytes -= b
                inactive[f] = b
                lru[f] -= 2
                self.demotions += 1
            f, b = inactive.popitem(last=False)
            del lru[f]
            self.used -= b
            if self.refault:
                self.shadows[f] = self.age
                self.age += b

    def warm(self, files, sizes, active=None):
        """Fill the cache as a long-running server would find it: `files` best first, the best
        placed last in their list. `active` (a bool per file) says which go to the active list;
        without it the best go there until it holds the share `inactive_is_low` allows."""
        if not self.lru:
            self.clear()
        cap = self.capacity
        chosen = []
        for f in files:
            f = int(f)
            b = float(sizes[f])
            if f not in self.lru and self.used + b <= cap:
                chosen.append((f, b))
                self.used += b
                self.lru[f] = 1
        ratio = self.ratio()
        room = cap * ratio / (ratio + 1)
        act, inact = [], []
        for f, b in chosen:
            if (active[f] if active is not None else self.active_bytes + b <= room):
                act.append((f, b))
                self.active_bytes += b
                self.lru[f] = 3
            else:
                inact.append((f, b))
        for f, b in reversed(act):
            self.active[f] = b
        for f, b in reversed(inact):
            self.inactive[f] = b
        self.shrink()

    def clear(self):
        self.lru.clear()
        self.inactive.clear()
        self.active.clear()
        self.used = self.active_bytes = 0.0


POLICIES = {"lru": PageCache, "two-list": TwoListCache}


def page_cache(env, disk: Disk, hw) -> PageCache:
    """The page cache of machine `hw` under its policy: its memory less the kernel's."""
    return POLICIES[hw.page_cache](env, disk, (hw.memory_mb - hw.kernel_mb) * 2**20)
