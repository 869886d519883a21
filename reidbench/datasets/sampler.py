"""PK identity batch sampler (P identities x K images per batch), distributed-aware.

Follows torchreid's ``RandomIdentitySampler`` (the sampler CLIP-ReID and the
papers built on it use): every epoch, each identity's images are shuffled and cut
into chunks of K (an identity with fewer than K images is sampled *with
replacement* up to K; the remainder of an identity whose count is not a multiple
of K is dropped for that epoch); batches then draw P distinct identities
uniformly at random among those that still have chunks, taking one chunk each.

What differs from torchreid, and why:

* **Distributed training.** The epoch plan is built in *steps*: one step draws
  ``P * world_size`` distinct identities and splits them into ``world_size``
  batches, rank ``r`` taking batch ``r``. All ranks build the same plan from
  ``(seed, epoch)``, so in one step no two ranks share a batch or an identity
  (losses that gather features across ranks see P * world_size distinct ids,
  as a single-process run with a world_size-times larger P would), and every rank
  gets exactly the same number of batches, so DDP's collectives never wait on a
  rank that ran out. torchreid's sampler has no distributed mode; slicing its
  stream per rank (as a ``DistributedSampler`` would) splits PK groups and gives
  ranks unequal lengths.
* **Exact length.** torchreid estimates ``__len__``; here the plan is computed
  (and cached per epoch), so ``len(sampler)`` is the number of batches this rank
  yields in the coming iteration.
* **Pure function of (seed, epoch).** No global RNG is touched: a NumPy
  generator seeded with ``[seed, epoch]`` builds the plan, so ``set_epoch`` plus
  ``state_dict`` make a resumed run draw exactly the batches an uninterrupted run
  would have drawn, including mid-epoch (``start_batch``).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["PKSampler"]


class PKSampler:
    """Batch sampler yielding lists of ``p * k`` dataset indices.

    Args:
        pids: identity of each dataset item, ``pids[i]`` for index ``i``.
        p: identities per batch (per rank).
        k: images per identity.
        seed: base seed; the plan of an epoch depends on ``(seed, epoch)`` only.
        rank, world_size: this process's place in distributed training.
        drop_last: ``True`` (torchreid's behaviour): identities left over when
            fewer than ``p * world_size`` still have chunks are dropped for the epoch.
            ``False``: they form one more step, topped up with other identities of
            the epoch (a fresh chunk drawn for each) so every batch still holds
            ``p`` distinct ids x ``k`` and every rank the same number of batches.

    Typical trainer loop (the trainer knows how many batches it consumed; the
    sampler cannot, because the DataLoader prefetches)::

        sampler.set_epoch(epoch)                      # or load_state_dict(ckpt) on resume
        for step, batch in enumerate(loader): ...
        ckpt = sampler.state_dict(batches_done=step + 1)
    """

    def __init__(
        self,
        pids: Sequence[int],
        p: int,
        k: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"PKSampler: p and k must be >= 1, got p={p}, k={k}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"PKSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if seed < 0:
            raise ValueError(f"PKSampler: seed must be >= 0, got {seed}")
        self.pids = [int(x) for x in pids]
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last = bool(drop_last)

        by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(self.pids):
            by_pid[pid].append(index)
        self._index_by_pid = {pid: np.asarray(idx, dtype=np.int64) for pid, idx in sorted(by_pid.items())}
        self._pid_order = list(self._index_by_pid)  # sorted: the plan must not depend on dict history
        needed = self.p * self.world_size
        if len(self._pid_order) < needed:
            raise ValueError(
                f"PKSampler: a step needs p * world_size = {self.p} * {self.world_size} = {needed} distinct "
                f"identities, but the split has only {len(self._pid_order)}; lower p or world_size"
            )
        self._fingerprint = zlib.crc32(np.asarray(self.pids, dtype=np.int64).tobytes())

        self.epoch = 0
        self.start_batch = 0
        self._plan_cache: tuple[int, list[list[list[int]]]] | None = None

    # -- the epoch plan --------------------------------------------------------
    def _chunks(self, rng: np.random.Generator) -> dict[int, list[np.ndarray]]:
        """Each identity's images shuffled and cut into K-chunks (torchreid's recipe)."""
        chunks: dict[int, list[np.ndarray]] = {}
        for pid in self._pid_order:
            idx = self._index_by_pid[pid]
            if len(idx) < self.k:
                idx = rng.choice(idx, size=self.k, replace=True)
            else:
                idx = rng.permutation(idx)
            n = len(idx) // self.k
            chunks[pid] = [idx[i * self.k : (i + 1) * self.k] for i in range(n)]
        return chunks

    def _fresh_chunk(self, pid: int, rng: np.random.Generator) -> np.ndarray:
        idx = self._index_by_pid[pid]
        return rng.choice(idx, size=self.k, replace=len(idx) < self.k)

    def epoch_plan(self, epoch: int | None = None) -> list[list[list[int]]]:
        """All ranks' batches of an epoch: ``plan[step][rank]`` is a list of ``p*k`` indices."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        chunks = self._chunks(rng)
        # Each chunk list is consumed from its end (pop), order already random.
        available = [pid for pid in self._pid_order if chunks[pid]]
        per_step = self.p * self.world_size
        plan: list[list[list[int]]] = []
        while len(available) >= per_step:
            chosen = [available[i] for i in rng.choice(len(available), size=per_step, replace=False)]
            plan.append(self._step(chosen, chunks))
            available = [pid for pid in available if chunks[pid]]
        if available and not self.drop_last:
            # Top up the leftover identities with others (distinct from them) so the
            # batch shape and the per-rank count stay fixed.
            leftover = set(available)
            others = [pid for pid in self._pid_order if pid not in leftover]
            extra = [others[i] for i in rng.choice(len(others), size=per_step - len(available), replace=False)]
            chosen = list(available) + extra
            order = rng.permutation(len(chosen))
            chosen = [chosen[i] for i in order]
            for pid in extra:
                chunks[pid].append(self._fresh_chunk(pid, rng))
            plan.append(self._step(chosen, chunks))
        self._plan_cache = (epoch, plan)
        return plan

    def _step(self, chosen: list[int], chunks: dict[int, list[np.ndarray]]) -> list[list[int]]:
        """Split one step's identities over the ranks, one K-chunk each."""
        step = []
        for r in range(self.world_size):
            batch: list[int] = []
            for pid in chosen[r * self.p : (r + 1) * self.p]:
                batch.extend(int(i) for i in chunks[pid].pop())
            step.append(batch)
        return step

    # -- batch-sampler protocol --------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.p * self.k

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank gets over the whole of the current epoch (ignores ``start_batch``)."""
        return len(self.epoch_plan())

    def __len__(self) -> int:
        """Batches the next iteration yields: the epoch's count minus ``start_batch``."""
        return max(self.batches_per_epoch - self.start_batch, 0)

    def iter_positions(self) -> Iterator[tuple[int, list[int]]]:
        """Yield ``(global_batch_number, indices)``; the number is unique over ranks within an epoch.

        The loader uses it to give each draw its own augmentation seed (an index drawn twice
        with replacement still gets two different augmentations)."""
        for step, batches in enumerate(self.epoch_plan()):
            if step < self.start_batch:
                continue
            yield step * self.world_size + self.rank, list(batches[self.rank])

    def __iter__(self) -> Iterator[list[int]]:
        for _, batch in self.iter_positions():
            yield batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate; ``start_batch`` skips batches already consumed (resume)."""
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"PKSampler.set_epoch: epoch and start_batch must be >= 0, got {epoch}, {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    # -- checkpoints -------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "p": self.p,
            "k": self.k,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
            "num_samples": len(self.pids),
            "pids_crc32": self._fingerprint,
        }

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Position plus the settings that define the plan.

        ``batches_done``: batches of the current epoch the trainer has consumed (default:
        the current ``start_batch``, i.e. "nothing consumed since ``set_epoch``")."""
        done = self.start_batch if batches_done is None else int(batches_done)
        return {"epoch": self.epoch, "start_batch": done, **self._config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position. Refuses a state whose plan settings differ from this sampler's:
        a resume that silently used another seed, P, K, world size or training split would not
        be the run it claims to continue."""
        mine = self._config()
        diff = [
            f"{key}: checkpoint {state.get(key)!r} vs now {value!r}" for key, value in mine.items() if state.get(key) != value
        ]
        if diff:
            raise ValueError(
                "PKSampler.load_state_dict: checkpoint was made with other sampler settings: " + "; ".join(diff)
            )
        self.set_epoch(int(state["epoch"]), int(state.get("start_batch", 0)))
