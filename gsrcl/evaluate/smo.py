"""libsvm's C-SVC solver, run on many problems at once on a torch device.

Each problem is the dual of a binary C-SVC with bias on an RBF kernel over some of the training
cells: min ½ αᵀQα − eᵀα subject to yᵀα = 0 and 0 ≤ αᵢ ≤ Cᵢ, with Qᵢⱼ = yᵢyⱼ exp(−γ dᵢⱼ). This is
libsvm's `Solver` step for step: variables start at 0, each iteration updates the pair chosen by
its second-order working-set selection (WSS2) and clips it to the box exactly as libsvm does, the
kernel values enter in float32 (libsvm caches Q as float) and the gradient in float64, and a
problem stops when its maximal violating pair is within `tol` (libsvm's `eps`, 1e-3 by default).
Variables are ordered as libsvm orders them (the first class's cells, then the second's, each in
training order) and held in reverse, so torch's first-index ties pick libsvm's last-index ones.
The bias is libsvm's `calculate_rho`. Shrinking, a libsvm heuristic that skips variables at their
bounds, is not done: every variable is checked at every iteration, so the stopping test is the
one libsvm applies after unshrinking.

All problems advance together, one pair each per iteration, as tensors of problems × cells;
kernel rows are computed from the squared distances when needed (no kernel is stored). Off a GPU,
problems that have converged are dropped from the batch every `check_every` iterations. On a GPU
the batch is padded to a bucketed shape and held at fixed addresses, so the CUDA graph of
`check_every` iterations is recorded once per shape and replayed by every later solve of it
(recording synchronises the whole device and empties torch's cache: once a job, not once a
validation step); finished problems stay in it, masked, until all are done.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

TAU = 1e-12  # libsvm's floor for a non-positive curvature
GRAPH_SHAPES = 4  # padded shapes a process keeps recorded (a job's steps share one or two)


@dataclass(frozen=True)
class DualProblem:
    """One binary C-SVC: `rows` index the distance matrix, `positive` marks the second class
    (libsvm's y = -1), and each class's box is C times its class weight."""

    rows: np.ndarray
    positive: np.ndarray  # bool, one per row
    gamma: float
    c_negative: float
    c_positive: float


@dataclass
class DualSolution:
    """Per problem (row), on the device: the decision function's coefficient of each of its
    rows (columns in the problem's `rows` order, zero-padded; scikit-learn's sign: a larger
    decision value means the positive class), its intercept, the iterations it took, and
    whether it met the tolerance. `rounds` and `cell_steps` measure the batch's work: the
    iterations it ran and, summed over them, problems × cells still in the batch."""

    coef: torch.Tensor
    intercept: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    rounds: int = 0
    cell_steps: int = 0


class _Batch:
    """The problems still being solved, as padded tensors (problems × cells). libsvm's gradient
    G is held as v = -y·G, the quantity its selection compares."""

    FIELDS = ("index", "rows", "place", "y", "box", "gamma", "alpha", "v", "up", "low")
    FIELDS += ("iterations", "done")

    def __init__(
        self,
        problems: list[DualProblem],
        tol: float,
        device: torch.device,
        shape: tuple[int, int] | None = None,
    ) -> None:
        """`shape`: (rows, width) to pad to; extra rows are empty problems, done at once."""
        self.width = max(len(p.rows) for p in problems)
        n, width = shape or (len(problems), self.width)
        rows = np.zeros((n, width), dtype=np.int64)
        place = np.full((n, width), width, dtype=np.int64)  # padding lands in a spare column
        sign = np.ones((n, width))
        box = np.zeros((n, width))
        for b, p in enumerate(problems):
            # libsvm's order (first class, then second, each in training order), reversed
            order = np.concatenate([np.flatnonzero(~p.positive), np.flatnonzero(p.positive)])[::-1]
            m = len(order)
            rows[b, :m], place[b, :m] = p.rows[order], order
            sign[b, :m] = np.where(p.positive[order], -1.0, 1.0)
            box[b, :m] = np.where(p.positive[order], p.c_positive, p.c_negative)
        self.tol = tol
        self.index = torch.arange(n, device=device)  # each row's problem in the caller's list
        self.rows = torch.as_tensor(rows, device=device)
        self.place = torch.as_tensor(place, device=device)  # each column's position in `rows`
        self.y = torch.as_tensor(sign, device=device)
        self.box = torch.as_tensor(box, device=device)  # padding has a box of 0: never moves
        gammas = [p.gamma for p in problems] + [0.0] * (n - len(problems))
        self.gamma = torch.as_tensor(gammas, device=device)[:, None].float()
        self.alpha = torch.zeros((n, width), dtype=torch.float64, device=device)
        self.v = self.y.clone()  # G = -1 at α = 0
        valid = self.box > 0
        # libsvm's I_up (α can move up along y) and I_low (down), updated where α changes
        self.up, self.low = valid & (self.y > 0), valid & (self.y < 0)
        self.iterations = torch.zeros(n, dtype=torch.int64, device=device)
        self.done = torch.zeros(n, dtype=torch.bool, device=device)

    def keep(self, mask: torch.Tensor) -> None:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[mask])


def _kernel_rows(rows, gamma, distances: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """K(row `column`, every row) of each problem: computed in float32, as libsvm caches it,
    then used in float64, as libsvm's arithmetic on it is."""
    picked = rows.gather(1, column[:, None])[:, 0]
    d = distances.index_select(0, picked).gather(1, rows)
    return d.mul_(-gamma).exp_().double()


def _step(batch: _Batch, distances: torch.Tensor) -> None:
    """One libsvm iteration on every problem of `batch` not yet done, in place. WSS2 first: i
    maximises v over I_up; j minimises the second-order objective over the pairs (i, j ∈ I_low)
    that violate; a problem is optimal when max - min of v over I_up and I_low is below tol.
    Only the batch's tensors change, in place (so a CUDA graph of it replays)."""
    rows, y, box, gamma, alpha, v = (
        batch.rows,
        batch.y,
        batch.box,
        batch.gamma,
        batch.alpha,
        batch.v,
    )
    up, low, done, tol = batch.up, batch.low, batch.done, batch.tol
    g_max, i = torch.where(up, v, -torch.inf).max(dim=1)
    k_i = _kernel_rows(rows, gamma, distances, i)
    grad_diff = g_max[:, None] - v
    curvature = (2.0 - 2.0 * k_i).clamp_min(TAU)  # K_ii + K_jj - 2 K_ij, K_ii = 1 (RBF)
    gain = torch.where(low & (grad_diff > 0), grad_diff * grad_diff / curvature, -1.0)
    best_gain, j = gain.max(dim=1)
    g_min = torch.where(low, v, torch.inf).min(dim=1).values
    done |= (g_max - g_min < tol) | (best_gain < 0)
    moving = ~done
    pair = torch.stack([i, j], dim=1)
    (y_i, y_j), (c_i, c_j) = y.gather(1, pair).unbind(1), box.gather(1, pair).unbind(1)
    (a_i, a_j), (v_i, v_j) = alpha.gather(1, pair).unbind(1), v.gather(1, pair).unbind(1)
    curvature = (2.0 - 2.0 * k_i.gather(1, j[:, None])[:, 0]).clamp_min(TAU)
    new_i, new_j = _clipped_pair(y_i != y_j, a_i, a_j, -y_i * v_i, -y_j * v_j, c_i, c_j, curvature)
    new = torch.stack([torch.where(moving, new_i, a_i), torch.where(moving, new_j, a_j)], dim=1)
    # assigned, not added: libsvm sets a clipped α to exactly C or 0
    alpha.scatter_(1, pair, new)
    signs, boxes = torch.stack([y_i, y_j], dim=1), torch.stack([c_i, c_j], dim=1)
    below_box, above_zero = new < boxes, new > 0
    up.scatter_(1, pair, torch.where(signs > 0, below_box, above_zero))
    low.scatter_(1, pair, torch.where(signs > 0, above_zero, below_box))
    k_j = _kernel_rows(rows, gamma, distances, j)
    # G += Q_i Δα_i + Q_j Δα_j with Q_it = y_i y_t K_it, so v = -y·G moves by -y_i Δα_i K_i…
    step = -signs * (new - torch.stack([a_i, a_j], dim=1))
    v.addcmul_(k_i, step[:, :1])
    v.addcmul_(k_j, step[:, 1:])
    batch.iterations += moving.long()


def _clipped_pair(differ, a_i, a_j, g_i, g_j, c_i, c_j, curvature):
    """The new (αᵢ, αⱼ): libsvm's analytic pair update, clipped to the box in its order."""
    # yᵢ ≠ yⱼ: αᵢ - αⱼ is kept
    delta = (-g_i - g_j) / curvature
    diff = a_i - a_j
    ni, nj = a_i + delta, a_j + delta
    low_j = (diff > 0) & (nj < 0)
    low_i = (diff <= 0) & (ni < 0)
    ni, nj = torch.where(low_j, diff, ni), torch.where(low_j, 0.0, nj)
    ni, nj = torch.where(low_i, 0.0, ni), torch.where(low_i, -diff, nj)
    high_i = (diff > c_i - c_j) & (ni > c_i)
    high_j = (diff <= c_i - c_j) & (nj > c_j)
    ni, nj = torch.where(high_i, c_i, ni), torch.where(high_i, c_i - diff, nj)
    ni, nj = torch.where(high_j, c_j + diff, ni), torch.where(high_j, c_j, nj)
    differ_i, differ_j = ni, nj
    # yᵢ = yⱼ: αᵢ + αⱼ is kept
    delta = (g_i - g_j) / curvature
    total = a_i + a_j
    ni, nj = a_i - delta, a_j + delta
    high_i = (total > c_i) & (ni > c_i)
    low_j = (total <= c_i) & (nj < 0)
    ni, nj = torch.where(high_i, c_i, ni), torch.where(high_i, total - c_i, nj)
    ni, nj = torch.where(low_j, total, ni), torch.where(low_j, 0.0, nj)
    high_j = (total > c_j) & (nj > c_j)
    low_i = (total <= c_j) & (ni < 0)
    ni, nj = torch.where(high_j, total - c_j, ni), torch.where(high_j, c_j, nj)
    ni, nj = torch.where(low_i, 0.0, ni), torch.where(low_i, total, nj)
    return torch.where(differ, differ_i, ni), torch.where(differ, differ_j, nj)


def _rho(batch: _Batch) -> torch.Tensor:
    """libsvm's `calculate_rho`: the mean of y·G over free variables, else the middle of the
    interval the bounded ones allow."""
    y, alpha, y_grad = batch.y, batch.alpha, -batch.v
    valid = batch.box > 0
    at_upper, at_lower = valid & (alpha >= batch.box), valid & (alpha <= 0)
    free = valid & ~at_upper & ~at_lower
    caps_above = (at_upper & (y < 0)) | (at_lower & (y > 0))
    caps_below = (at_upper & (y > 0)) | (at_lower & (y < 0))
    upper = torch.where(caps_above, y_grad, torch.inf).min(dim=1).values
    lower = torch.where(caps_below, y_grad, -torch.inf).max(dim=1).values
    n_free = free.sum(dim=1)
    mean_free = torch.where(free, y_grad, 0.0).sum(dim=1) / n_free.clamp_min(1)
    return torch.where(n_free > 0, mean_free, (upper + lower) / 2)


def solve(
    distances: torch.Tensor,
    problems: list[DualProblem],
    tol: float = 1e-3,
    check_every: int = 32,
    max_iterations: int | None = None,
    padded: bool | None = None,
) -> DualSolution:
    """Solve every problem on `distances`' device (squared distances among all cells; float32
    is libsvm's precision for kernel values). A problem still above `tol` after
    `max_iterations` (default 100 × its size, at least 10 000) is returned as not converged.
    `padded` (default: on a GPU) runs the batch at a bucketed shape through this process's
    replay of that shape; otherwise problems leave the batch as they finish."""
    if not problems:
        empty = torch.zeros(0, device=distances.device)
        return DualSolution(empty.double()[:, None], empty.double(), empty.long(), empty.bool())
    limit = max_iterations or max(10_000, 100 * max(len(p.rows) for p in problems))
    padded = distances.is_cuda if padded is None else padded
    with torch.no_grad():
        if padded:
            return _solve_padded(distances, problems, tol, check_every, limit)
        return _solve_compacting(distances, problems, tol, check_every, limit)


def _answers(n: int, width: int, device: torch.device) -> DualSolution:
    """Room for `n` answers; column `width` takes the padding's writes."""
    return DualSolution(
        coef=torch.zeros((n, width + 1), dtype=torch.float64, device=device),
        intercept=torch.zeros(n, dtype=torch.float64, device=device),
        iterations=torch.zeros(n, dtype=torch.int64, device=device),
        converged=torch.zeros(n, dtype=torch.bool, device=device),
    )


def _solve_compacting(distances, problems, tol, check_every, limit) -> DualSolution:
    """Operation by operation; every `check_every` iterations the finished problems leave."""
    batch = _Batch(problems, tol, distances.device)
    out = _answers(len(problems), batch.width, distances.device)
    while len(batch.index):
        for _ in range(check_every):
            _step(batch, distances)
        out.rounds += check_every
        out.cell_steps += check_every * len(batch.index) * batch.width
        finished = batch.done | (batch.iterations >= limit)
        if bool(finished.any()):  # the only synchronisation with the device
            _collect(batch, finished, out)
            batch.keep(~finished)
    out.coef = out.coef[:, : batch.width]
    return out


def _solve_padded(distances, problems, tol, check_every, limit) -> DualSolution:
    """The batch at its bucketed shape, replayed `check_every` iterations at a time until every
    problem is done or at the cap (finished ones stay in the batch, masked)."""
    n, width = len(problems), max(len(p.rows) for p in problems)
    shape = Shape(
        str(distances.device), bucket(n), bucket(width), bucket(len(distances)), check_every, tol
    )
    batch = _Batch(problems, tol, distances.device, (shape.problems, shape.width))
    out = _answers(n, shape.width, distances.device)
    with GRAPHS.use(shape, batch) as replay:
        replay.load(batch, distances)
        while True:
            out.rounds += replay.run()
            out.cell_steps += check_every * shape.problems * shape.width
            held = replay.batch
            finished = held.done[:n] | (held.iterations[:n] >= limit)
            if bool(finished.all()):  # the only synchronisation with the device
                break
        _collect(held, torch.arange(shape.problems, device=distances.device) < n, out)
    out.coef = out.coef[:, :width]
    return out


def bucket(n: int) -> int:
    """`n` rounded up to one of four sizes an octave (…, 320, 384, 448, 512, 640, …): batches
    of similar sizes share a padded shape, at most 25 % larger than they are."""
    step = max(1, (1 << max(0, (n - 1).bit_length() - 1)) // 4)
    return -(-n // step) * step


@dataclass(frozen=True)
class Shape:
    """A padded batch's shape: what a recorded graph is good for."""

    device: str
    problems: int
    width: int
    cells: int  # of the distance matrix
    iterations: int  # recorded in one replay
    tol: float


class _Replay:
    """A padded batch held at fixed addresses, with its own copy of the distances, and
    `shape.iterations` iterations of it: on a GPU one CUDA graph (one launch instead of ~140
    small ones an iteration, which would leave the GPU waiting on Python), recorded on first
    use; elsewhere, or if recording fails, the same iterations operation by operation."""

    recordings = 0  # CUDA graphs this process has recorded

    def __init__(self, shape: Shape, batch: _Batch) -> None:
        self.shape, self.batch = shape, batch  # the first solve's batch is the one held
        device = batch.alpha.device
        self.distances = torch.zeros((shape.cells, shape.cells), dtype=torch.float32, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.to_record, self.warmed = self.distances.is_cuda, 0
        self.lock = threading.Lock()
        self.solves = 0

    def load(self, batch: _Batch, distances: torch.Tensor) -> None:
        """A solve's problems and distances into the held tensors (on the current stream, which
        the replay runs on, so they are in place first)."""
        if batch is not self.batch:
            for name in _Batch.FIELDS:
                getattr(self.batch, name).copy_(getattr(batch, name))
        self.distances[: len(distances), : len(distances)].copy_(distances)
        self.solves += 1

    def run(self) -> int:
        """Run the iterations; how many ran."""
        if self.to_record:
            self.to_record = False
            self._record()
        if self.graph is not None:
            self.graph.replay()
        else:
            for _ in range(self.shape.iterations):
                _step(self.batch, self.distances)
        ran, self.warmed = self.shape.iterations + self.warmed, 0
        return ran

    def _record(self) -> None:
        device = self.distances.device
        try:
            # torch's recipe: warm up on a side stream, then capture (nothing runs meanwhile)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                _step(self.batch, self.distances)  # a real iteration, counted as one
            torch.cuda.current_stream(device).wait_stream(side)
            self.warmed = 1
            graph = torch.cuda.CUDAGraph()
            # "thread_local": the training thread keeps launching its own kernels meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                for _ in range(self.shape.iterations):
                    _step(self.batch, self.distances)
        except RuntimeError as error:  # run eagerly: same kernels, same answers
            log.warning("CUDA graph of the SVM solver not recorded (%s); running eagerly", error)
            torch.cuda.synchronize(device)
            return
        self.graph = graph
        _Replay.recordings += 1


class _Replays:
    """This process's replays by shape; the `GRAPH_SHAPES` most recently used are kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: OrderedDict[Shape, _Replay] = OrderedDict()

    @contextmanager
    def use(self, shape: Shape, batch: _Batch) -> Iterator[_Replay]:
        """The replay of `shape` (holding `batch` if it is new), for this solve alone."""
        with self._lock:
            replay = self._kept.pop(shape, None) or _Replay(shape, batch)
            self._kept[shape] = replay
            while len(self._kept) > GRAPH_SHAPES:
                self._kept.popitem(last=False)
        with replay.lock:
            yield replay

    def solves(self) -> dict[Shape, int]:
        """The shapes kept and the solves each has served."""
        with self._lock:
            return {shape: replay.solves for shape, replay in self._kept.items()}

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


GRAPHS = _Replays()


def release_graphs() -> None:
    """Drop the recorded graphs and the tensors they hold (a job's end: its worker gives the
    memory back to the GPU it shares)."""
    GRAPHS.clear()


def _collect(batch: _Batch, finished: torch.Tensor, out: DualSolution) -> None:
    """Write the finished problems' answers into `out`, in each problem's own row order."""
    index = batch.index[finished]
    signed = (-batch.y * batch.alpha)[finished]  # the positive class is libsvm's y = -1
    out.coef[index[:, None], batch.place[finished]] = signed
    out.intercept[index] = _rho(batch)[finished]
    out.iterations[index] = batch.iterations[finished]
    out.converged[index] = batch.done[finished]


def objective_and_violation(
    kernel: np.ndarray, positive: np.ndarray, coef: np.ndarray, box: np.ndarray
) -> tuple[float, float]:
    """A solution's dual objective and its maximal violating pair (libsvm stops when that is
    below eps), from scikit-learn's signed coefficients over the fit's rows and each row's box
    (C times its class weight). The kernel's values enter as the solver saw them."""
    y = np.where(positive, -1.0, 1.0)
    alpha = np.abs(coef)
    grad = y * (kernel @ (y * alpha)) - 1.0
    objective = 0.5 * float((y * alpha) @ kernel @ (y * alpha)) - float(alpha.sum())
    up = np.where(y > 0, alpha < box, alpha > 0)
    low = np.where(y > 0, alpha > 0, alpha < box)
    violation = -y * grad
    return objective, float(violation[up].max(initial=-np.inf) - violation[low].min(initial=np.inf))
