"""How well a run's training signals agree with the evaluation oracle, during training and held out.

Training never consults the oracle (``utils.oracle``). After each iteration the host lets the run look
back: ``SignalAudit.flush`` judges up to ``per_iteration`` of the signals the iteration handed out with
the oracle (scope ``monitor``) and adds them to running agreement counts. The same measures are taken
on the held-out evaluation samples once training is over (``agreement``). Measures per signal kind:

* ``reward``: ``helpful_auc`` = P(R(helpful answer) > R(unhelpful answer)) on must-answer prompts (the
  AUC of the reward as a detector of the oracle's helpfulness; ties count 1/2);
* ``cost``: ``sign_accuracy`` = mean 1[(C > 0) == oracle unsafe];
* ``verdict``: ``unsafe_accuracy``, ``overrefuse_accuracy``, ``label_accuracy`` (3-way);
* ``label`` and ``evaluator_label``: ``label_accuracy``.

Every measure comes with ``n``, the number of samples it rests on.
"""

from __future__ import annotations

from typing import Any, Sequence

MUST_ANSWER = ("benign", "borderline")
_MAX_REWARD_PAIRS = 4096


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(a random positive scores above a random negative), ties 1/2; None without both classes."""
    if not positives or not negatives:
        return None
    ranked = sorted([(v, 1) for v in positives] + [(v, 0) for v in negatives])
    # rank-sum (Mann-Whitney U) with mid-ranks for ties
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + j + 1) / 2.0  # 1-based mid-rank of the tie block i..j-1
        rank_sum += mid * sum(flag for _, flag in ranked[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


class AgreementCounts:
    """Running agreement counts per signal kind (see module docstring); plain data, checkpointable."""

    def __init__(self) -> None:
        self.hits: dict[str, dict[str, float]] = {}
        self.totals: dict[str, dict[str, float]] = {}
        self.reward_pairs: list[tuple[float, bool]] = []

    def _add(self, kind: str, measure: str, hit: bool) -> None:
        self.hits.setdefault(kind, {}).setdefault(measure, 0.0)
        self.totals.setdefault(kind, {}).setdefault(measure, 0.0)
        self.hits[kind][measure] += float(hit)
        self.totals[kind][measure] += 1.0

    def add(self, kind: str, records: Sequence[Any], values: Sequence[Any], truth: Sequence[Any]) -> None:
        """Compare the signal ``values`` of ``kind`` with the oracle's verdicts ``truth``."""
        for record, value, verdict in zip(records, values, truth):
            if kind == "reward":
                if record.kind in MUST_ANSWER and len(self.reward_pairs) < _MAX_REWARD_PAIRS:
                    self.reward_pairs.append((float(value), bool(verdict.helpful >= 1.0)))
            elif kind == "cost":
                self._add(kind, "sign_accuracy", (float(value) > 0) == bool(verdict.unsafe))
            elif kind == "verdict":
                self._add(kind, "unsafe_accuracy", bool(value.unsafe) == bool(verdict.unsafe))
                self._add(kind, "overrefuse_accuracy", bool(value.overrefuse) == bool(verdict.overrefuse))
                self._add(kind, "label_accuracy", value.label == verdict.label)
            else:  # label, evaluator_label: 3-way labels
                self._add(kind, "label_accuracy", value == verdict.label)

    def summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for kind, measures in self.totals.items():
            out[kind] = {m: self.hits[kind][m] / total for m, total in measures.items() if total}
            out[kind]["n"] = max(measures.values())
        if self.reward_pairs:
            value = auc([r for r, h in self.reward_pairs if h], [r for r, h in self.reward_pairs if not h])
            out["reward"] = {"n": float(len(self.reward_pairs))}
            if value is not None:
                out["reward"]["helpful_auc"] = value
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"hits": self.hits, "totals": self.totals, "reward_pairs": list(self.reward_pairs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hits = {k: dict(v) for k, v in state["hits"].items()}
        self.totals = {k: dict(v) for k, v in state["totals"].items()}
        self.reward_pairs = [(float(r), bool(h)) for r, h in state["reward_pairs"]]


class SignalAudit:
    """Signals handed out during training, waiting to be judged by the oracle after the iteration."""

    def __init__(self, per_iteration: int) -> None:
        self.per_iteration = int(per_iteration)
        self.pending: list[tuple[str, list, list[str], list]] = []
        self.counts = AgreementCounts()

    def record(self, kind: str, records: Sequence[Any], texts: Sequence[str], values: Sequence[Any]) -> None:
        if self.per_iteration > 0:
            self.pending.append((kind, list(records), list(texts), list(values)))

    def flush(self, oracle) -> dict[str, float]:
        """Judge up to ``per_iteration`` pending signals per kind with ``oracle``; returns running agreement."""
        pending, self.pending = self.pending, []
        if oracle is None or not pending:
            return {}
        budget: dict[str, int] = {}
        for kind, records, texts, values in pending:
            room = self.per_iteration - budget.get(kind, 0)
            if room <= 0:
                continue
            records, texts, values = records[:room], texts[:room], values[:room]
            budget[kind] = budget.get(kind, 0) + len(records)
            self.counts.add(kind, records, values, oracle.judge_batch(records, texts))
        return {f"signals/{kind}/{measure}": value for kind, measures in self.counts.summary().items()
                for measure, value in measures.items() if measure != "n"}
