"""The fairness guard: when the evaluation oracle may be consulted, and a count of every consultation.

The evaluation oracle is what the final evaluation scores with: the world's ground-truth judge, and
more generally the run's ``eval.judge``. No algorithm may learn from it unless ``signals=oracle``
says so (an explicitly labelled upper bound). The guard makes that a property of the running code,
not a convention: the Lightning host runs every training iteration inside ``oracle_scope("train")``,
and the oracle calls ``consult()`` on every verdict it gives. Under ``signals=learned`` a consultation
in the ``train`` scope raises ``OracleLeakError`` at once. The other scopes are allowed and counted:

* ``setup``: building data (the world's simulated annotators label pairs and feedback examples);
* ``monitor``: after an iteration, the host lets a component measure what it trained on against the
  oracle (``AlgorithmComponent.monitor``); those numbers are logged, never fed back into a loss;
* ``eval``: the final evaluation.

``oracle_calls()`` returns the counts per scope; every job writes them to
``summary.json["training_signals"]["oracle_calls"]``, so a reader sees ``train: 0``.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from alignbench.errors import OracleLeakError

SCOPES = ("setup", "train", "monitor", "eval")

_scope: ContextVar[str] = ContextVar("alignbench_oracle_scope", default="setup")
_allowed_in_training: ContextVar[bool] = ContextVar("alignbench_oracle_in_training", default=False)
_calls: Counter = Counter()


@contextmanager
def oracle_scope(name: str) -> Iterator[None]:
    """Run the block in scope ``name`` (one of ``SCOPES``)."""
    if name not in SCOPES:
        raise ValueError(f"unknown oracle scope '{name}'; expected one of {SCOPES}")
    token = _scope.set(name)
    try:
        yield
    finally:
        _scope.reset(token)


@contextmanager
def oracle_allowed_in_training(allowed: bool) -> Iterator[None]:
    """``signals=oracle`` runs its job inside ``oracle_allowed_in_training(True)``."""
    token = _allowed_in_training.set(bool(allowed))
    try:
        yield
    finally:
        _allowed_in_training.reset(token)


def current_scope() -> str:
    return _scope.get()


def consult(what: str = "the world's ground-truth judge", count: int = 1) -> None:
    """Called by the oracle for every ``count`` verdicts it gives; refuses training-time use (see module doc)."""
    scope = _scope.get()
    if scope == "train" and not _allowed_in_training.get():
        raise OracleLeakError(
            f"a training step consulted the evaluation oracle ({what}); under signals=learned training signals "
            f"come from learned models only (use ctx.signals, or signals=oracle for a labelled upper bound)")
    _calls[scope] += int(count)


def oracle_calls() -> dict[str, int]:
    """Verdicts the oracle gave so far in this process, per scope."""
    return {scope: int(_calls.get(scope, 0)) for scope in SCOPES}


def reset_oracle_calls() -> None:
    """Start counting afresh (each job of a multirun counts its own calls)."""
    _calls.clear()


class GuardedJudge:
    """The run's evaluation judge (``ctx.judge``) behind the guard: every verdict is a consultation.

    Judges that consult the guard themselves (the world judge: ``consults_itself = True``) are not
    counted twice. Everything else (``bind``, ``name``, ...) is the wrapped judge's.
    """

    def __init__(self, judge) -> None:
        self.inner = judge

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def _consult(self, count: int) -> None:
        if not getattr(self.inner, "consults_itself", False):
            consult(f"the evaluation judge '{getattr(self.inner, 'name', type(self.inner).__name__)}'", count)

    def judge(self, record, response):
        self._consult(1)
        return self.inner.judge(record, response)

    def judge_batch(self, records, responses):
        self._consult(len(records))
        return self.inner.judge_batch(records, responses)
