"""Queues' guarantees and maxima per GPU model, for one decision cycle.

A queue may be guaranteed, or capped at, a number (or share) of the GPUs of one model
(``guaranteed: {gpu_types: {A100: 8}}``, ``maximum: {gpu_types: {H100: 4}}``; see
``dlapp.scheduler.queues``). The policy asks this module two things about an app:

- ``restrict``: the GPU models it may still land on without taking its queue (or an ancestor)
  over a per-model maximum; or, when none is left, why it waits ("needs an A100; root.nlp
  holds 8/8 A100s, its maximum");
- ``within_guarantee``: whether it fits in what its queue is guaranteed of a model it accepts,
  so that it is served with the queues under their guarantee.

What each queue holds of each model is read from the nodes its running apps' containers sit on,
and grows as the cycle admits apps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from dlapp.scheduler.gpus import GPU_EPS, describe_models, describe_share
from dlapp.scheduler.queues import QueueTree, TypeLimits
from dlapp.scheduler.snapshot import AppHead, NodeView, RunningApp


class ModelQuotas:
    def __init__(
        self,
        tree: QueueTree,
        nodes: Sequence[NodeView],
        running: Iterable[RunningApp],
        path_of: Callable[[str], str],
        chain: Callable[[str], list[str]],
    ) -> None:
        self.active = tree.typed
        self.chain = chain
        self.model_of: dict[str, str] = {}
        self.models: tuple[str, ...] = ()
        self.limits: dict[str, TypeLimits] = {}
        self.used: dict[tuple[str, str], float] = defaultdict(float)  # (queue, model) -> GPUs
        if not self.active:
            return
        totals: dict[str, float] = defaultdict(float)
        for n in nodes:
            self.model_of[n.node_id] = n.model
            if n.model and n.total.gpus > GPU_EPS:
                totals[n.model] += n.total.gpus
        self.models = tuple(sorted(totals))
        self.limits = tree.resolve_types(dict(totals))
        for app in running:
            self.charge(chain(path_of(app.queue)), app.nodes, app.request.gpus)

    def charge(self, chain: Sequence[str], nodes: Iterable[str], gpus: float) -> None:
        """Containers of ``gpus`` each on ``nodes``, held by the queues of ``chain``."""
        if not self.active or gpus <= GPU_EPS:
            return
        for node_id in nodes:
            model = self.model_of.get(node_id, "")
            if model:
                for p in chain:
                    self.used[(p, model)] += gpus

    def _candidates(self, head: AppHead) -> list[str]:
        if not head.gpu_types:
            return list(self.models)
        wanted = {m.casefold() for m in head.gpu_types}
        return [m for m in self.models if m.casefold() in wanted]

    def restrict(self, head: AppHead, path: str) -> AppHead | str:
        """``head``, limited to the models its queue's per-model maxima leave room on (itself
        when they bind on none); or why it waits when they bind on every model it accepts."""
        need = head.total.gpus
        if not self.active or need <= GPU_EPS:
            return head
        candidates = self._candidates(head)
        allowed: list[str] = []
        binding: tuple[str, str, float, float] | None = None  # the first cap that binds
        for model in candidates:
            binds = self._binding_cap(path, model, need)
            if binds is None:
                allowed.append(model)
            elif binding is None:
                binding = (model, *binds)
        if binding is None:
            return head
        if allowed:
            return replace(head, gpu_types=tuple(allowed))
        model, queue, used, cap = binding
        return (
            f"needs {describe_models(candidates or list(head.gpu_types))}; {queue} holds "
            f"{describe_share(used)}/{describe_share(cap)} {model}s, its maximum of them"
        )

    def _binding_cap(self, path: str, model: str, need: float) -> tuple[str, float, float] | None:
        """(queue, held, maximum) of the first queue on ``path``'s chain whose maximum of
        ``model`` cannot take ``need`` more GPUs of it; None when none binds."""
        for p in self.chain(path):
            limits = self.limits.get(p)
            if limits is None or model not in limits.maximum:
                continue
            cap, used = limits.maximum[model], self.used[(p, model)]
            if used + need > cap + GPU_EPS:
                return (p, used, cap)
        return None

    def within_guarantee(self, head: AppHead, path: str) -> bool:
        """Whether ``head`` fits in what its queue is guaranteed of a model it accepts."""
        need = head.total.gpus
        limits = self.limits.get(path)
        if not self.active or need <= GPU_EPS or limits is None or not limits.guaranteed:
            return False
        return any(
            self.used[(path, m)] + need <= limits.guaranteed.get(m, 0.0) + GPU_EPS
            for m in self._candidates(head)
        )

    def relative(self, path: str) -> float:
        """The least used of the queue's per-model guarantees (held / guaranteed); inf when
        it has none: a queue with a model's guarantee unused is served as early as a queue
        with nothing."""
        limits = self.limits.get(path)
        if not self.active or limits is None:
            return math.inf
        ratios = [self.used[(path, m)] / g for m, g in limits.guaranteed.items() if g > GPU_EPS]
        return min(ratios, default=math.inf)

    def guaranteed_models(self, head: AppHead, path: str) -> tuple[str, ...]:
        """The models ``head`` accepts of which its queue is guaranteed enough to hold it."""
        need = head.total.gpus
        limits = self.limits.get(path)
        if not self.active or need <= GPU_EPS or limits is None:
            return ()
        return tuple(
            m
            for m in self._candidates(head)
            if self.used[(path, m)] + need <= limits.guaranteed.get(m, 0.0) + GPU_EPS
        )

    def over(self, path: str, model: str, used: float | None = None) -> bool:
        """Whether the queue holds more GPUs of ``model`` than it is guaranteed of them."""
        limits = self.limits.get(path)
        held = self.used[(path, model)] if used is None else used
        guaranteed = 0.0 if limits is None else limits.guaranteed.get(model, 0.0)
        return held > guaranteed + GPU_EPS

    def protects(self, app: RunningApp, path: str) -> bool:
        """Whether ``app`` sits on GPUs its queue is guaranteed of their model: preempting it
        for another queue's general guarantee would take that promise back."""
        limits = self.limits.get(path)
        if not self.active or limits is None or not limits.guaranteed:
            return False
        models = {self.model_of.get(n, "") for n in app.nodes}
        return any(m in limits.guaranteed and not self.over(path, m) for m in models)

    def on_models(self, app: RunningApp, models: Iterable[str]) -> bool:
        """Whether any container of ``app`` sits on a node of one of ``models``."""
        wanted = set(models)
        return any(self.model_of.get(n, "") in wanted for n in app.nodes)
