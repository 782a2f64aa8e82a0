"""The function runtime pool: V8 isolates in supervised worker processes.

Engine decision (measured on this 2-core machine, see bench/runtime and issue 4):
STPyV8 costs ~1.4 µs per sync call and ~8 µs for a whole single-event invocation; a crossing
carrying 100 events costs < 1 µs per event. mini-racer costs 300-640 µs per call and ~0.9 ms
per host callback. But STPyV8 cannot be terminated safely from another thread, has no
per-isolate heap limit, freezes V8 flags at import, and a memory bomb aborts the whole process
("Fatal JavaScript out of memory" at ~1.5 GB after 6 s). So the speed comes from STPyV8 and the
safety from processes: isolates live in worker processes that this pool supervises. A watchdog
(every 10 ms while any invocation is in flight or any worker is in V8; asleep otherwise)
reads each worker's shared status block (which invocation is inside V8, since when) and kills
the worker when that invocation passes its deadline (outcome Timeout) or holds more than the
memory limit (outcome MemoryLimitExceeded, context discarded; memory held across awaits
counts, see `MemoryLedger`), or when an invocation grows the whole worker past its RSS limit
(the same outcome for it). The other invocations that were in the dead worker are re-run
elsewhere when they had sent no request yet (their functions lose only their cached
globals, which the contract allows); those that had end as a retryable `WorkerLost`, like
events of any lost worker, so no request is silently sent twice. The offender is then
quarantined: for a while its invocations run only on a separate worker, where a repeated
loop or bomb harms no other tenant. Invocations queued behind a stalled crossing are moved
to another worker at once, so one function's infinite loop does not delay other functions
(a move is not one of an invocation's attempts); a tenant whose crossings keep workers
stalled (`worker_time.py`) is quarantined too, though none of its invocations timed out, and
so is one that had workers stopped twice lately (its instances are many).
Processes also put every core to work despite the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from .config import MAX_TIMEOUT_S, RuntimeConfig
from .errors import InvalidInvocation, PoolClosedError, WorkerStartError
from .memory_ledger import MemoryLedger
from .model import PREVIEW_OWNER, Invocation, InvocationResult, owner_of
from .narrowing import narrow
from .protocol import (
    LOADING,
    NO_SLOT,
    PREFIX_SIZE,
    EgressFrame,
    InitFrame,
    RunFrame,
    encode_frame,
    frame_sizes,
    has_sent,
    read_created,
    read_progress,
    read_received,
    read_status,
    write_drop_up_to,
)
from .results import build_result, count_events, loss_outcome
from .worker_handle import MOVED, REQUEUE, Lost, Pending, WorkerHandle, status_block
from .worker_time import LIMIT_S, StallTally

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_MAX_ATTEMPTS = 6
# Moves off stalled workers an invocation may take (each waits for a worker to be free).
_MAX_MOVES = 100
_KILL_GRACE_S = 0.05
# A worker out of V8 that has not answered an invocation this long past its deadline never
# will (a reply it could not send, a bug): it is replaced, or the invocation waits forever.
_ANSWER_GRACE_S = 5.0
# How long a function whose invocation got a worker killed runs on the quarantine worker.
QUARANTINE_S = 300.0
# What a kill blamed on an invocation costs its tenant's stall tally: a second one within
# about half a minute sends the tenant to the quarantine worker.
KILL_CHARGE = 0.9 * LIMIT_S
# And its tenant's count of kills, decayed over minutes: kills just over half a minute apart
# never passed the stall tally (rotating instances, each quarantined alone, a tenant stopped
# the shared worker twice a minute for ever). The third within about 80 s sends the tenant
# aside, as do kills more often than every ≈ 3.5 minutes for long.
KILLS_HALF_LIFE_S = 300.0
KILLS_LIMIT = 2.5


# How long an invocation's function runs on the quarantine worker when it was suspected, not
# proven, of growing a worker stopped for memory: isolated, not failed.
PROBATION_S = 60.0


def hard_limit(worker_limit: int) -> int:
    """Return the RSS past which a replaced worker still growing is stopped (its growth is
    nobody's for sure): a quarter over its limit, so it and its successor stay within a
    pod sized for one worker and a half."""
    return worker_limit + worker_limit // 4


log = logging.getLogger(__name__)
SPAWN_ATTEMPTS = 3


class RuntimePool:
    """Runs function invocations in supervised V8 worker processes."""

    def __init__(self, config: RuntimeConfig) -> None:
        self._config = config
        # The last slot is the quarantine worker, started when a function first needs it.
        self._q = max(1, config.workers)
        self._workers: list[WorkerHandle | None] = [None] * (self._q + 1)
        self._retiring: set[WorkerHandle] = set()  # replaced, finishing their invocations
        self._readers: set[asyncio.Task[None]] = set()
        # Workers replaced, by cause (timeout, memory, crash, retired), for metrics.
        self.restarts: dict[str, int] = {}
        self._affinity: dict[str, int] = {}
        # Functions that got a worker killed (owners) and tenants that kept workers stalled
        # ("tenant " + id), and until when they run only in quarantine.
        self._quarantine: dict[str, float] = {}
        self._stalls = StallTally()
        self._kills = StallTally(half_life_s=KILLS_HALF_LIFE_S, limit_s=KILLS_LIMIT)
        self._handlers: dict[str, frozenset[str]] = {}
        # The watchdog's memory samples of each worker with invocations in flight.
        self._ledgers: dict[WorkerHandle, MemoryLedger] = {}
        self._seq = itertools.count(1)
        self._changed = asyncio.Event()
        # Set when an invocation is handed to a worker: the watchdog sleeps on it while no
        # worker has anything in flight (an idle executor wakes for nothing).
        self._work = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._spawns: set[asyncio.Task[None]] = set()
        self._closed = True

    @property
    def config(self) -> RuntimeConfig:
        """Return the pool's configuration."""
        return self._config

    async def start(self) -> None:
        """Start the workers and the watchdog."""
        self._closed = False
        # The first worker alone: on a new machine, importing STPyV8 writes its ICU data file
        # (/usr/share/stpyv8), and workers importing it at the same time could read it torn.
        await self._spawn(0)
        await asyncio.gather(*(self._spawn(i) for i in range(1, self._q)))
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        """Stop every worker."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for task in list(self._spawns):
            task.cancel()
        for w in [*self._workers, *self._retiring]:
            if w is not None:
                self._kill(w, None, "crash")
        # Every reader ends once its worker's pipe closes and the process is reaped.
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._workers = [None] * len(self._workers)

    async def __aenter__(self) -> RuntimePool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ workers
    async def _spawn(self, index: int) -> None:
        """Start worker `index`, trying again when a start fails transiently.

        (The MemoryError once seen in `JSPlatform.init` was STPyV8 handing V8 a freed ICU
        path that happened to name a directory; engine.py imports it through v8_import.py.)
        """
        for attempt in range(1, SPAWN_ATTEMPTS + 1):
            try:
                await self._spawn_once(index)
                return
            except WorkerStartError:
                if attempt == SPAWN_ATTEMPTS or self._closed:
                    raise
                log.warning("worker %d failed to start (attempt %d); retrying", index, attempt)
                await asyncio.sleep(0.2 * attempt)

    async def _spawn_once(self, index: int) -> None:
        status, path = status_block()
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.runtime.worker",
                path,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                limit=2**31,
            )
            w = WorkerHandle(index, proc, status, path)
            self._workers[index] = w
            w.reader = asyncio.get_running_loop().create_task(self._read(w))
            self._readers.add(w.reader)
            w.reader.add_done_callback(self._readers.discard)
            egress = self._config.egress
            init: InitFrame = {
                "op": "init",
                "egress": EgressFrame(
                    **{
                        **egress.__dict__,
                        "allow": list(egress.allow),
                        "no_proxy": list(egress.no_proxy),
                    }
                ),
                "max_contexts": self._config.max_contexts_per_worker,
            }
            try:
                self._send(w, init)
            except (RuntimeError, ConnectionError):
                pass  # the worker died at once: reported below as a failed start
            ready = asyncio.get_running_loop().create_task(w.ready.wait())
            await asyncio.wait({ready, w.reader}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            if not w.ready.is_set():
                ready.cancel()
                self._kill(w, None, "crash")
                raise WorkerStartError(
                    f"worker exited ({w.proc.returncode}) or sent no ready message"
                )
            self._changed.set()
        finally:
            # Both sides have it mapped once the worker is ready: unlinking leaves nothing
            # behind if this process dies; a start that failed or was cancelled (the pool
            # closing mid-spawn, as a preview does after a runaway) leaves nothing either.
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _respawn(self, index: int) -> None:
        if self._closed:
            return
        if index == self._q:
            if self._quarantine:
                self._respawn_quarantine()
            else:
                self._workers[index] = None  # started again when a function needs it
            return
        task = asyncio.get_running_loop().create_task(self._spawn(index))
        self._spawns.add(task)
        task.add_done_callback(self._spawns.discard)

    def _send(self, w: WorkerHandle, header: Any, payload: bytes = b"") -> None:
        assert w.proc.stdin is not None
        w.proc.stdin.write(encode_frame(header, payload))

    async def _read(self, w: WorkerHandle) -> None:
        stdout = w.proc.stdout
        assert stdout is not None
        try:
            while True:
                head_len, payload_len = frame_sizes(await stdout.readexactly(PREFIX_SIZE))
                header = orjson.loads(await stdout.readexactly(head_len))
                if payload_len:
                    await stdout.readexactly(payload_len)
                if "ready" in header:
                    w.ready.set()
                    continue
                pending = w.inflight.pop(int(header["id"]), None)
                if pending is None or pending.future.done():
                    continue
                pending.future.set_result(MOVED if header.get("dropped") else header)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        if not w.dead:  # it closed its pipe: it died by itself (give it a moment to exit)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await w.proc.wait()
            code = w.proc.returncode
            crossing = read_status(w.status)[0]
            culprit = w.inflight.get(crossing)
            log.warning(
                "worker %d exited by itself (code %s) with %d invocations in flight%s",
                w.index,
                code,
                len(w.inflight),
                f", {culprit.key} inside V8" if culprit else "",
            )
            self._kill(w, culprit, "crash")
        await w.proc.wait()

    def _kill(
        self, w: WorkerHandle, culprit: Pending | None, reason: str, *, blamed: bool = True
    ) -> None:
        """Kill `w`: its `culprit` ends as `reason`, and when `blamed` its function is
        quarantined and its event at fault named; the other invocations run again or, once
        they sent a request, are retried as bystanders."""
        if w.dead:
            return
        w.dead = True
        self._retiring.discard(w)
        self._ledgers.pop(w, None)
        if not self._closed:
            self.restarts[reason] = self.restarts.get(reason, 0) + 1
        with contextlib.suppress(ProcessLookupError):
            w.proc.kill()
        lost = Lost(reason)
        if culprit is not None and blamed:
            now = time.monotonic()
            # Ended quarantines go here: an owner deleted meanwhile is never looked up again.
            self._quarantine = {o: t for o, t in self._quarantine.items() if t > now}
            self._quarantine[owner_of(culprit.key)] = now + QUARANTINE_S
            # And its tenant is charged nearly its whole share: an instance's quarantine
            # alone let a workspace of many instances kill the worker once per instance.
            self._charge(culprit, KILL_CHARGE, now, why="had a worker stopped again", kills=1.0)
            progress_seq, index = read_progress(w.status)
            known = progress_seq == culprit.seq
            lost = Lost(
                reason,
                offender=index if known and index < LOADING else None,
                loading=known and index == LOADING,
                sent=has_sent(w.status, culprit.slot),
            )
        for pending in w.inflight.values():
            if pending.future.done():
                continue
            if pending is culprit:
                pending.future.set_result(lost)
            elif has_sent(w.status, pending.slot):
                # It may have reached an API already: running it again now could send its
                # requests twice unannounced; a retry is recorded as such.
                pending.future.set_result(Lost("bystander"))
            else:
                pending.future.set_result(REQUEUE)
        w.inflight.clear()
        for key in w.keys:
            if self._affinity.get(key) == w.index:
                del self._affinity[key]
        with contextlib.suppress(OSError):
            w.status.close()
            os.unlink(w.status_path)
        if self._workers[w.index] is w and w.ready.is_set():
            self._respawn(w.index)
        self._changed.set()

    async def _watch(self) -> None:
        limit = self._config.memory_limit_mb * 1024 * 1024
        stall_ns = int(self._config.stall_ms * 1e6)
        worker_limit = self._config.worker_rss_limit_mb * 1024 * 1024
        max_created = self._config.worker_max_contexts
        tick = 0
        idle = False
        while True:
            if idle:
                # Nothing in flight and no worker in V8 at the last look: sleep until work.
                self._work.clear()
                await self._work.wait()
            last_tick = time.monotonic()
            await asyncio.sleep(self._config.watchdog_interval_s)
            tick += 1
            now_ns = time.monotonic_ns()
            now = now_ns / 1e9
            idle = True
            for w in [*self._workers, *self._retiring]:
                if w is None or w.dead or not w.ready.is_set():
                    continue
                seq, started, _, _ = read_status(w.status)
                pending = w.inflight.get(seq) if seq else None
                idle = idle and seq == 0 and not w.inflight
                if tick % 100 == 0 and self._past_limits(w, worker_limit, max_created):
                    self._retire(w)
                if not w.inflight and seq == 0:
                    self._ledgers.pop(w, None)  # idle: no memory to charge, no RSS to read
                elif self._check_memory(w, (seq, started), limit, worker_limit):
                    continue
                if seq == 0:
                    if w.stalled:
                        w.stalled, w.stalled_key = False, None
                        self._changed.set()
                    unanswered = self._unanswered(w, now) if tick % 10 == 0 else None
                    if unanswered is not None:
                        log.error(
                            "worker %d has not answered an invocation of %s %.0f s past its "
                            "deadline: replacing it",
                            w.index,
                            unanswered.key,
                            now - unanswered.deadline,
                        )
                        # Out of V8, it may be held up by another invocation's host work (a
                        # costly redaction) or stopped: the late one times out, none is blamed.
                        self._kill(w, unanswered, "timeout", blamed=False)
                    continue
                # The grace spares the short crossing that ends an invocation at its deadline.
                if (
                    pending is not None
                    and now > pending.deadline + _KILL_GRACE_S
                    and now_ns - started > _KILL_GRACE_S * 1e9
                ):
                    self._kill(w, pending, "timeout")
                    continue
                if pending is None and now_ns - started > MAX_TIMEOUT_S * 1e9:
                    self._kill(w, None, "timeout")
                    continue
                if now_ns - started > stall_ns and w.index != self._q:
                    if not w.stalled:
                        w.stalled = True
                        w.stalled_key = pending.key if pending is not None else None
                        self._steal(w)
                    if pending is not None:
                        past = min(now - last_tick, (now_ns - started - stall_ns) / 1e9)
                        self._charge(pending, past, now)
            if idle:  # about to sleep until work: first replace a worker past its limits
                for w in self._workers:
                    if (
                        w is not None
                        and not w.dead
                        and w.ready.is_set()
                        and self._past_limits(w, worker_limit, max_created)
                    ):
                        self._retire(w)

    @staticmethod
    def _unanswered(w: WorkerHandle, now: float) -> Pending | None:
        """Return an invocation `w` should have answered long ago, if any."""
        for pending in w.inflight.values():
            if now > pending.deadline + _ANSWER_GRACE_S and not pending.future.done():
                return pending
        return None

    def _past_limits(self, w: WorkerHandle, worker_limit: int, max_created: int) -> bool:
        """Tell whether a worker is due to be replaced: past its memory, or past its contexts
        when no worker it replaced is still finishing (replaced ones, each holding its
        contexts' memory for an invocation that waits out its timeout, piled up)."""
        if w.retiring:
            return False
        if w.rss() > worker_limit:
            return True
        return read_created(w.status) > max_created and not any(
            r.index == w.index for r in self._retiring
        )

    def _check_memory(
        self, w: WorkerHandle, crossing: tuple[int, int], limit: int, worker_limit: int
    ) -> bool:
        """Kill `w` if an invocation holds more than `limit` or grows `w` past `worker_limit`.

        Return whether `w` was killed. A worker past its limit that no invocation grew by
        more than `limit` (contexts, many legitimate invocations) is only replaced.
        """
        rss, received = w.rss(), read_received(w.status)
        ledger = self._ledgers.get(w)
        if ledger is None:
            ledger = self._ledgers[w] = MemoryLedger(rss, received=received)
        ledger.forget_finished(w.inflight)
        solo = next(iter(w.inflight)) if len(w.inflight) == 1 else 0
        owner = ledger.observe(rss, crossing, solo, received)
        # Once an invocation has sent requests, the worker also grows for their bodies (the
        # host's, bounded by its response budget) and for copying them in, memory given back
        # after the crossing: then its crossings count one by one, and the worker's own
        # limit for all of them.
        pending = w.inflight.get(owner)
        fetched = pending is None or has_sent(w.status, pending.slot)
        if owner and ledger.over(owner, limit, across=not fetched):
            self._kill(w, w.inflight.get(owner), "memory")
            return True
        if rss <= worker_limit:
            return False
        seq, grown = ledger.suspect()
        culprit = w.inflight.get(seq)
        # The growth is only suspected of the culprit, and once any invocation on the worker
        # has sent requests, the host's growth for their bodies looks the same (blamed, a
        # neighbour's fetched bodies failed a bystander's events for good and quarantined its
        # instance): such a worker is replaced, its invocations finishing, and stopped with
        # nobody blamed only if it grows on past the hard limit. Its suspect (past the limit,
        # growth the host made for bodies received not counted) then runs on the quarantine
        # worker for a while, on probation, its events retried as the others': a function
        # growing its worker by short crossings after one fetch was never blamed, and stopped
        # shared worker after shared worker.
        if any(has_sent(w.status, p.slot) for p in w.inflight.values()):
            if rss > hard_limit(worker_limit):
                log.warning(
                    "stopping worker %d at %d MB, a quarter past its memory limit: nobody is "
                    "blamed, its growth may be the host's for requests sent%s",
                    w.index,
                    rss >> 20,
                    f"; {culprit.key}, which may have grown it by {grown >> 20} MB, runs on "
                    f"the quarantine worker for {PROBATION_S:.0f} s"
                    if culprit is not None and grown > limit
                    else "",
                )
                if culprit is not None and grown > limit:
                    now = time.monotonic()
                    owner = owner_of(culprit.key)
                    self._quarantine[owner] = max(
                        self._quarantine.get(owner, 0.0), now + PROBATION_S
                    )
                    # And half a blamed kill to its tenant: one rotating instances is
                    # quarantined by its third such stop within about half a minute.
                    self._charge(
                        culprit, KILL_CHARGE / 2, now, why="had workers stopped again", kills=0.5
                    )
                self._kill(w, None, "memory")
                return True
        elif culprit is not None and grown > limit:
            # Retiring would wait for the culprit, which may grow the worker until the host
            # runs out of memory: killing it returns the memory now.
            log.warning(
                "stopping worker %d, past its memory limit (%d MB): %s grew it by %d MB",
                w.index,
                rss >> 20,
                culprit.key,
                grown >> 20,
            )
            self._kill(w, culprit, "memory")
            return True
        if not w.retiring:
            self._retire(w)
        return False

    def _retire(self, w: WorkerHandle) -> None:
        """Replace a worker: a new one takes its slot; it finishes what it has, then stops."""
        log.info(
            "replacing worker %d (%d MB, %d contexts created)",
            w.index,
            w.rss() // 2**20,
            read_created(w.status),
        )
        # A predecessor still past the memory limit is stopped when its slot is replaced
        # again: a function keeping memory in its globals while one of its invocations waits
        # out its timeout kept each replaced worker alive, and their memory piled up. (One
        # replaced for its contexts finishes its invocations, some of which sent requests.)
        worker_limit = self._config.worker_rss_limit_mb * 2**20
        for older in [r for r in self._retiring if r.index == w.index]:
            if older.rss() > worker_limit:
                log.warning("stopping worker %d, replaced twice before it finished", w.index)
                self._kill(older, None, "retired")
        w.retiring = True
        self._retiring.add(w)
        for key in w.keys:
            if self._affinity.get(key) == w.index:
                del self._affinity[key]
        w.keys.clear()
        self._workers[w.index] = None
        self._respawn(w.index)
        self._stop_if_idle(w)

    def _stop_if_idle(self, w: WorkerHandle) -> None:
        if w.retiring and not w.inflight and not w.dead:
            self._kill(w, None, "retired")

    def _steal(self, w: WorkerHandle) -> None:
        """Move the frames the stuck worker has not read yet to other workers right away.

        The drop mark is written first, then what the worker has read is looked at (the
        worker writes what it reads, then looks at the mark): a frame it reads after the
        look is dropped by it, one it read before is left to it. Looked at before the mark
        (earlier in the watchdog's pass), a frame read meanwhile ran here and elsewhere.
        """
        if not w.inflight:
            return
        mark = read_status(w.status)[3]
        write_drop_up_to(w.status, max(mark, *w.inflight))  # never lowered: moved ones stay
        last_read = read_status(w.status)[2]
        for p in [p for s, p in w.inflight.items() if s > last_read]:
            if p.key == w.stalled_key:
                continue  # it will come back as "dropped" and be re-sent to this worker
            del w.inflight[p.seq]
            if not p.future.done():
                p.future.set_result(MOVED)

    def _charge(
        self,
        pending: Pending,
        seconds: float,
        now: float,
        *,
        why: str = "kept V8 workers in long crossings for more than its share lately",
        kills: float = 0.0,
    ) -> None:
        """Count worker time a stalled crossing took (or a kill, and `kills` of them);
        quarantine its tenant past its share.

        A workspace's previews answer for themselves (their owner, as a killed preview's
        quarantine): a member allowed previews only must not send the workspace's instances
        aside."""
        owner = owner_of(pending.key)
        held = owner if owner.startswith(PREVIEW_OWNER) else f"tenant {pending.tenant or owner}"
        over = self._stalls.charge(held, seconds, now)
        if kills and self._kills.charge(held, kills, now):
            over, why = True, "had workers stopped again and again in the last minutes"
        if over:
            log.warning(
                "%s %s: it runs on the quarantine worker for %.0f s",
                held.removeprefix("tenant "),
                why,
                QUARANTINE_S,
            )
            self._quarantine[held] = now + QUARANTINE_S
            # Its invocations waiting in stalled workers' pipes go there too (and others'
            # with them, to be sent again): behind a loop they would run one after another.
            # A worker not stalled reads its frames soon: none is taken from it.
            for w in self._workers[: self._q]:
                if w is not None and not w.dead and w.stalled:
                    self._steal(w)

    def _quarantined(self, key: str, tenant: str = "") -> bool:
        now = time.monotonic()
        held = False
        for who in (owner_of(key), f"tenant {tenant or owner_of(key)}"):
            until = self._quarantine.get(who)
            if until is not None and until < now:
                del self._quarantine[who]
            elif until is not None:
                held = True
        return held

    async def _pick(self, key: str, tenant: str = "") -> WorkerHandle:
        while True:
            if self._closed:
                raise PoolClosedError("the runtime pool is closed")
            index = self._affinity.get(key)
            if self._quarantined(key, tenant):
                w = self._workers[self._q]
                if w is not None and not w.dead and w.ready.is_set():
                    self._move(key, index, w)
                    return w
                if w is None:
                    self._respawn_quarantine()
                self._changed.clear()
                await self._changed.wait()
                continue
            if index is not None and index != self._q:
                w = self._workers[index]
                if w is not None and (w.usable or (not w.dead and w.stalled_key == key)):
                    return w
            candidates = [w for w in self._workers[: self._q] if w is not None and w.usable]
            if candidates:
                w = min(candidates, key=lambda c: (len(c.keys), len(c.inflight)))
                self._move(key, index, w)
                return w
            self._changed.clear()
            await self._changed.wait()

    def _move(self, key: str, old_index: int | None, w: WorkerHandle) -> None:
        """Give `key` to worker `w`, dropping its context from the worker it had."""
        if old_index is not None and old_index != w.index:
            old = self._workers[old_index]
            if old is not None and not old.dead:
                old.keys.discard(key)
                self._send(old, {"op": "evict", "key": key})
        self._affinity[key] = w.index
        w.keys.add(key)

    def _respawn_quarantine(self) -> None:
        if not any(t.get_name() == "quarantine-spawn" for t in self._spawns):
            task = asyncio.get_running_loop().create_task(
                self._spawn(self._q), name="quarantine-spawn"
            )
            self._spawns.add(task)
            task.add_done_callback(self._spawns.discard)

    async def _submit(
        self, key: str, header: dict[str, Any], payload: bytes, timeout_s: float
    ) -> Any:
        loop = asyncio.get_running_loop()
        tenant = str(header.get("tenant", ""))
        attempts = moves = 0
        while attempts < _MAX_ATTEMPTS:
            w = await self._pick(key, tenant)
            seq = next(self._seq)
            slot = w.take_slot() if header["op"] == "run" else NO_SLOT
            deadline = time.monotonic() + timeout_s
            pending = Pending(seq, key, deadline, loop.create_future(), slot, tenant)
            w.inflight[seq] = pending
            self._work.set()
            frame = {**header, "id": seq, "key": key, "deadline": pending.deadline, "slot": slot}
            self._send(w, frame, payload)
            reply = await pending.future
            w.release(pending)
            self._stop_if_idle(w)
            if reply is REQUEUE:
                attempts += 1  # its worker died: running it again may kill the next one
            elif reply is not MOVED:
                return reply
            else:
                moves += 1
                if moves >= _MAX_MOVES:  # never run: it is retried later
                    return Lost("busy", sent=False)
        return Lost("crash")

    # ------------------------------------------------------------------ public API
    def known_handlers(self, function_key: str) -> frozenset[str] | None:
        """Return the handler names of a function whose code was loaded, None before."""
        return self._handlers.get(function_key)

    async def handlers(self, function_key: str, code: str, tenant: str = "") -> frozenset[str]:
        """Return the handler names (onTrack ... onBatch) that a function's code defines;
        `tenant` is whose (see `Invocation.tenant`): loading it runs its top-level code, in
        quarantine when the tenant is, and charged to it."""
        known = self._handlers.get(function_key)
        if known is not None:
            return known
        reply = await self._submit(
            function_key,
            {"op": "handlers", "code": code, "tenant": tenant},
            b"",
            self._config.default_timeout_s,
        )
        names = frozenset(reply["handlers"]) if isinstance(reply, dict) else frozenset()
        self._handlers[function_key] = names
        return names

    def evict(self, function_key: str) -> None:
        """Drop a function's context (its globals and cache) from whichever worker holds it."""
        self._handlers.pop(function_key, None)
        index = self._affinity.pop(function_key, None)
        w = None if index is None else self._workers[index]
        if w is not None and not w.dead:
            w.keys.discard(function_key)
            self._send(w, {"op": "evict", "key": function_key})

    async def run(
        self, invocation: Invocation, *, fresh: bool = False, careful: bool = False
    ) -> InvocationResult:
        """Run an invocation; outcomes[i] is the outcome of event i.

        `careful` starts each handler in its own crossing so that a handler that never
        returns is named: the pool uses it to find the offender of a killed invocation.
        """
        if not 0 < invocation.timeout_s <= MAX_TIMEOUT_S:
            raise InvalidInvocation(
                f"timeout_s must be in (0, {MAX_TIMEOUT_S:g}] seconds, got {invocation.timeout_s}"
            )
        started = time.monotonic()
        count = invocation.count
        if count is None:
            count = count_events(invocation.events)
        header: RunFrame = {
            "op": "run",
            "id": 0,
            "key": invocation.function_key,
            "deadline": 0.0,
            "slot": NO_SLOT,
            "code": invocation.code,
            "settings": orjson.dumps(invocation.settings).decode(),
            "batch": invocation.batch,
            "count": count,
            "secrets": list(invocation.secrets),
            "keep": invocation.trace_bodies,
            "log_cap": invocation.log_cap_bytes or self._config.log_cap_bytes,
            "fresh": fresh,
            "memory_limit": self._config.memory_limit_mb * 1024 * 1024,
            "careful": careful,
            "trace_headers": [list(h) for h in invocation.trace_headers],
            "tenant": invocation.tenant,
        }
        reply = await self._submit(
            invocation.function_key, dict(header), invocation.events, invocation.timeout_s
        )
        if isinstance(reply, Lost):
            return await self._after_loss(invocation, count, reply, started, fresh, careful)
        return build_result(invocation, count, reply, (time.monotonic() - started) * 1000)

    async def _after_loss(
        self,
        invocation: Invocation,
        count: int,
        lost: Lost,
        started: float,
        fresh: bool,
        careful: bool,
    ) -> InvocationResult:
        self._handlers.pop(invocation.function_key, None)
        outcome = loss_outcome(lost.reason, invocation.timeout_s, self._config.memory_limit_mb)
        if lost.reason in ("bystander", "busy"):
            elapsed = (time.monotonic() - started) * 1000
            return InvocationResult(outcomes=[outcome] * count, duration_ms=elapsed)
        return await narrow(
            lambda sub, careful: self.run(sub, fresh=fresh, careful=careful),
            invocation,
            count,
            lost,
            outcome,
            started,
            careful=careful,
        )
