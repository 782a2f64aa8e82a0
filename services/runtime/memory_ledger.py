"""Which invocation of a busy worker holds the memory it grew: the pool's watchdog samples
the worker's RSS and its status block (which invocation is inside V8, since when), and the
ledger charges each sample's growth to the invocation that can alone have made it."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

# How much the worker may grow for each response byte it receives: the body held, joined, and
# encoded into the script that hands it to the function.
HOST_FACTOR = 4


@dataclass
class _Charge:
    """The memory growth, in bytes, charged to one invocation while it is in flight."""

    base: int  # the worker's RSS just before the first growth charged to it
    # Growth only it can have made, less what was freed meanwhile (never below 0).
    own: int = 0
    # Every rise charged to it or suspected of it, frees not subtracted: a free during its
    # crossing may be another invocation's garbage, which must not let it grow the worker.
    rises: int = 0

    def held(self, rss: int) -> int:
        """Return its own growth, less what the worker has given back since its base."""
        # Its garbage may be collected in a neighbour's crossing, credited to the neighbour.
        return min(self.own, rss - self.base)

    def grown(self, rss: int) -> int:
        """Return how much of the worker's growth since its base it may have made."""
        return min(self.rises, rss - self.base)


@dataclass
class MemoryLedger:
    """Charge a busy worker's RSS growth, sample by sample, to the invocations that made it.

    The watchdog samples the worker's RSS and its status block (which invocation is inside
    V8, since when). Growth between two samples is an invocation's own when both saw the
    same crossing of it (as the limit was first measured) or, when it was the only invocation
    in flight at both, two of its crossings: its charge then runs on across its awaits, so
    memory its code holds over timers and fetches counts. Growth between crossings beside
    other functions' invocations, or while it waits outside V8, cannot be told apart from
    the host's (a fetch round's bodies): charging it would blame neighbours or the platform,
    so it is only suspected of the last invocation seen in V8, to pick whom to stop when the
    worker passes its own limit. Growth up to HOST_FACTOR times the response bytes the worker
    received (`received`: the host holds, joins and encodes them, then or a little later) is
    suspected of nobody: a tenant fetching bodies its own server trickled got the growth
    suspected of a bystander busy in V8 meanwhile.
    """

    rss: int  # at the last sample
    crossing: tuple[int, int] = (0, 0)  # (invocation seq, start ns) in V8 at the last sample
    crossing_base: int = 0  # RSS at the first sample of that crossing
    solo: int = 0  # the only invocation in flight at the last sample (0: none, or several)
    last_in_v8: int = 0  # the last in-flight invocation a sample found inside V8
    received: int = 0  # response bytes the worker had received at the last sample
    host: int = 0  # growth still put down to the host for the bodies received
    charges: dict[int, _Charge] = field(default_factory=dict)

    def observe(self, rss: int, crossing: tuple[int, int], solo: int, received: int = 0) -> int:
        """Charge the growth since the last sample; return whose own it was (0: nobody's)."""
        delta, seq = rss - self.rss, crossing[0]
        self.host += HOST_FACTOR * max(0, received - self.received)
        self.received = received
        owner = 0
        if seq and crossing == self.crossing:
            owner = seq
        elif solo and solo == self.solo and solo == seq == self.crossing[0]:
            # Alone in flight and in V8 at both samples, in two of its crossings: what its
            # code allocated before an await is its own. A sample outside V8 ends the run:
            # growth then is the host's work for it (a fetch round's bodies, bounded by its
            # response budget, in memory the allocator may keep), only suspected.
            owner = solo
        elif seq or self.last_in_v8:
            host = min(self.host, max(0, delta))  # growth outside one crossing: the host's?
            self.host -= host
            self._charge(seq or self.last_in_v8).rises += max(0, delta) - host
        if owner:
            charge = self._charge(owner)
            charge.own = max(0, charge.own + delta)
            charge.rises += max(0, delta)
        if crossing != self.crossing:
            self.crossing_base = rss
        self.rss, self.crossing, self.solo = rss, crossing, solo
        self.last_in_v8 = seq or self.last_in_v8
        return owner

    def over(self, seq: int, limit: int, *, across: bool = True) -> bool:
        """Tell whether `seq` grew the worker by more than `limit` in this crossing or, with
        `across`, in all its crossings together."""
        if seq == self.crossing[0] and self.rss - self.crossing_base > limit:
            return True
        if not across:
            return False
        charge = self.charges.get(seq)
        return charge is not None and charge.held(self.rss) > limit

    def suspect(self) -> tuple[int, int]:
        """Return (seq, bytes) of the invocation that most likely grew the worker, or (0, 0)."""
        best = (0, 0)
        for seq, charge in self.charges.items():
            grown = charge.grown(self.rss)
            if grown > best[1]:
                best = (seq, grown)
        return best

    def forget_finished(self, in_flight: Container[int]) -> None:
        """Drop the charges of invocations no longer in flight (except the one in V8)."""
        for seq in [s for s in self.charges if s not in in_flight and s != self.crossing[0]]:
            del self.charges[seq]
        if self.last_in_v8 not in in_flight:
            self.last_in_v8 = 0

    def _charge(self, seq: int) -> _Charge:
        charge = self.charges.get(seq)
        if charge is None:
            charge = self.charges[seq] = _Charge(self.rss)
        return charge
