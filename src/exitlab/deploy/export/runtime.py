"""Run an exported model with onnxruntime: every exit, or real early exit with batched compaction.

The router asks the same :class:`exitlab.policies.Policy` as the PyTorch path, exit by exit, on the samples still
running: ``step`` scores them, ``decide`` compares with the threshold, ``compact`` drops the rows of those that left.
Only the surviving samples' features go into the next stage's graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import ExitlabError
from ...evaluation.policies import Policy, State, policy_from_dict
from .manifest import ExportError, GraphEntry, Manifest, read_manifest

log = logging.getLogger("exitlab")


@dataclass
class Prediction:
    """Per-sample results of early exit. Arrays have the batch first, in the input order."""

    pred: np.ndarray  # [B] int64: the class the policy predicts at the exit taken
    exit: np.ndarray  # [B] int64: exit index, 0 .. num_exits - 1
    score: np.ndarray  # [B] float32: the policy's score at the exit taken
    confidence: np.ndarray  # [B] float32: maximum softmax probability of the exit's logits
    logits: np.ndarray  # [B, C] float32: logits of the exit taken
    flops: np.ndarray  # [B] int64: FLOPs spent on the sample (all graphs for the all-exits layout)


def check_threads(threads: int) -> int:
    """onnxruntime intra-op threads per session: a whole number >= 1."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ExitlabError(f"--threads must be a whole number >= 1 (onnxruntime threads per request), got {threads!r}")
    return threads


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind error types for unreadable graphs
        raise ExportError(f"onnxruntime cannot load {path} ({type(e).__name__}: {str(e)[:300]}); re-export") from e


def _dims(shape) -> list:
    return [d if isinstance(d, int) else None for d in shape]


def _check_io(sess, g: GraphEntry, man: Manifest, name: str) -> None:
    """The graph's declared inputs and outputs must be what the manifest says."""
    ins, outs = sess.get_inputs(), sess.get_outputs()
    if [i.name for i in ins] != g.inputs or [o.name for o in outs] != g.outputs:
        raise ExportError(f"{name}: graph has inputs {[i.name for i in ins]} and outputs {[o.name for o in outs]}, "
                          f"the manifest says {g.inputs} and {g.outputs}; the manifest does not match its graphs")
    for i, want in zip(ins, g.input_shapes):
        got = _dims(i.shape)
        if got[1:] != list(want):
            raise ExportError(f"{name}: input {i.name!r} has shape {got[1:]} per sample, the manifest says {want}; "
                              "the manifest does not match its graphs")
    for o in outs:
        if o.name.startswith("logits") and _dims(o.shape)[-1:] != [man.num_classes]:
            raise ExportError(f"{name}: output {o.name!r} has shape {o.shape}, expected {man.num_classes} classes "
                              "as the manifest says; the manifest does not match its graphs")


def _check_chain(man: Manifest, sessions) -> None:
    """The first graph takes the manifest's input shape; in the staged layout stage j+1 takes what stage j gives."""
    if list(man.graphs[0].input_shapes[0]) != list(man.input_shape):
        raise ExportError(f"the first graph takes {man.graphs[0].input_shapes[0]}, the manifest's input is "
                          f"{man.input_shape}; the manifest does not match its graphs")
    if man.layout == "all" and len(sessions[0].get_outputs()) != man.num_exits:
        raise ExportError(f"the all-exits graph has {len(sessions[0].get_outputs())} outputs for {man.num_exits} "
                          "exits; the manifest does not match its graphs")
    for j in range(len(sessions) - 1 if man.layout == "staged" else 0):
        feats = [_dims(o.shape)[1:] for o in sessions[j].get_outputs()[:-1]]
        nxt = [list(s) for n, s in zip(man.graphs[j + 1].inputs, man.graphs[j + 1].input_shapes) if n != "prev_logits"]
        known = all(d is not None for f in feats for d in f)
        if len(feats) != len(nxt) or (known and feats != nxt):
            raise ExportError(f"stage {j} returns features of shape {feats}, stage {j + 1} takes {nxt}; the export "
                              "mixes graphs from different models")


class OnnxModel:
    """An export directory loaded into onnxruntime sessions, checked against its manifest.

    ``policy``: a :class:`Policy` (with its threshold), or None for the one in the manifest. Without either, every
    sample runs to the final exit.
    """

    def __init__(self, export_dir: str | Path, *, policy: Policy | None = None, threads: int = 1):
        check_threads(threads)
        self.dir = Path(export_dir)
        self.manifest = read_manifest(self.dir)
        self.sessions = [_session(self.dir / g.file, threads) for g in self.manifest.graphs]
        for g, s in zip(self.manifest.graphs, self.sessions):
            _check_io(s, g, self.manifest, str(self.dir / g.file))
        _check_chain(self.manifest, self.sessions)
        if policy is None and self.manifest.policy:
            policy = policy_from_dict(self.manifest.policy)
        self._threshold(policy)
        self.policy = policy

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest.input_shape)

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 1 + len(self.input_shape) or tuple(x.shape[1:]) != self.input_shape:
            want = ", ".join(map(str, self.input_shape))
            raise ExitlabError(f"input has shape {list(x.shape)}, expected [batch, {want}]")
        return np.ascontiguousarray(x, dtype=np.float32)

    def all_exits(self, x: np.ndarray) -> list[np.ndarray]:
        """Logits of every exit for every sample (no early exit), final exit last: ``num_exits`` arrays ``[B, C]``."""
        x = self._check_input(x)
        if self.manifest.layout == "all":
            return self.sessions[0].run(None, {"x": x})
        outs, h, prev = [], [x], None
        for g, sess in zip(self.manifest.graphs, self.sessions):
            res = sess.run(None, _feeds(g, h, prev))
            h, prev = res[:-1], res[-1]
            outs.append(prev)
        return outs

    def predict(self, x: np.ndarray, policy: Policy | None = None) -> Prediction:
        """Real early exit: each stage runs only on the samples that no earlier exit let go."""
        x = self._check_input(x)
        policy = policy or self.policy
        t = self._threshold(policy)
        if len(x) == 0:
            return _empty(0, self.manifest.num_classes)
        if self.manifest.layout == "all":
            return self._simulate(x, policy, t)
        return self._route(x, policy, t)

    def _threshold(self, policy: Policy | None) -> float | None:
        """The policy's threshold as the float the PyTorch path compares with, checked against its range."""
        if policy is None:
            return None
        if policy.threshold is None:
            raise ExitlabError(f"policy {policy.name!r} has no threshold; give one to route samples between exits")
        return policy.check_threshold(policy.threshold, self.manifest.num_exits, self.manifest.num_classes)

    def _route(self, x: np.ndarray, policy: Policy | None, t: float | None) -> Prediction:
        man, B = self.manifest, len(x)
        res = _empty(B, man.num_classes)
        alive = np.arange(B)  # original row of every sample still running
        h, prev, state = [x], None, {}
        for j, (g, sess) in enumerate(zip(man.graphs, self.sessions)):
            outs = sess.run(None, _feeds(g, h, prev))
            logits = outs[-1]  # [b, C]
            leave, score, pred, state = _decide(policy, t, j, logits, state, j == man.num_exits - 1)
            if not leave.any():  # nobody leaves here (at batch 1, the common case): no records, no copies
                h, prev = outs[:-1], logits  # every feature output (one per scale for MSDNet)
                continue
            _record(res, alive[leave], j, logits[leave], score[leave], pred[leave], man.exit_flops[j])
            if leave.all():
                break
            keep = ~leave
            alive, h, prev = alive[keep], [o[keep] for o in outs[:-1]], logits[keep]  # compaction: [b', ...]
            state = policy.compact(state, torch.from_numpy(keep)) if policy is not None else state
        return res

    def _simulate(self, x: np.ndarray, policy: Policy | None, t: float | None) -> Prediction:
        """All-exits graph: every exit is computed, then the policy picks per sample (same decisions, no savings)."""
        man, B = self.manifest, len(x)
        res = _empty(B, man.num_classes)
        outs = self.sessions[0].run(None, {"x": x})
        alive, state = np.arange(B), {}
        for j, logits in enumerate(outs):
            logits = logits[alive]
            leave, score, pred, state = _decide(policy, t, j, logits, state, j == man.num_exits - 1)
            _record(res, alive[leave], j, logits[leave], score[leave], pred[leave], man.graphs[0].flops)
            keep = ~leave
            alive = alive[keep]
            state = policy.compact(state, torch.from_numpy(keep)) if policy is not None else state
            if len(alive) == 0:
                break
        return res


def _feeds(g: GraphEntry, h: list[np.ndarray], prev: np.ndarray | None) -> dict[str, np.ndarray]:
    """A stage's inputs: its feature tensors (one, or one per scale for MSDNet), then the previous logits if taken."""
    names = [n for n in g.inputs if n != "prev_logits"]
    return {**dict(zip(names, h)), **({"prev_logits": prev} if "prev_logits" in g.inputs else {})}


def _empty(B: int, C: int) -> Prediction:
    return Prediction(pred=np.zeros(B, np.int64), exit=np.full(B, -1, np.int64), score=np.zeros(B, np.float32),
                      confidence=np.zeros(B, np.float32), logits=np.zeros((B, C), np.float32),
                      flops=np.zeros(B, np.int64))


def _decide(policy: Policy | None, t: float | None, j: int, logits: np.ndarray, state: State, last: bool):
    """(leave mask, score, pred, state) for the samples at exit ``j``; at the final exit every sample leaves."""
    z = torch.from_numpy(logits)  # [b, C]
    if policy is None:
        score, pred = z.softmax(-1).max(-1)
        leave = torch.full((len(z),), last)
    else:
        score, pred, state = policy.step(j, z, state)
        leave = torch.ones(len(z), dtype=torch.bool) if last else policy.decide(score, t)
    return leave.numpy(), score.numpy(), pred.numpy(), state


def _record(res: Prediction, rows: np.ndarray, j: int, logits: np.ndarray, score: np.ndarray, pred: np.ndarray,
            flops: int) -> None:
    res.exit[rows] = j
    res.logits[rows] = logits
    res.score[rows] = score
    res.pred[rows] = pred
    res.confidence[rows] = torch.from_numpy(logits).softmax(-1).max(-1).values.numpy() if len(rows) else 0
    res.flops[rows] = flops
