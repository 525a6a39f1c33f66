"""The behaviour-graph model: heads on the edges of a behaviour DAG, tasks composed along paths.

Each edge `src -> dst` carries either a head (an MLP tower predicting P(dst | src) with a sigmoid)
or the complement `1 - head` of a sibling edge. An output [a, b] is P(reach b | at a): the sum over
all paths from a to b of the product of the edge probabilities. ESMM, ESM2 and HM3 are configs.
Every loss is a cross entropy of an output against a product of labels (e.g. click*conversion).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from cvr.models.config import resolve, validate_model_config
from cvr.models.contrastive import ContrastiveBranch
from cvr.models.embeddings import InputLayer
from cvr.models.towers import mlp

Path = list[tuple[str, bool]]  # (head name, use 1 - p) per edge along one path


@dataclass
class ModelOutput:
    probs: dict[str, Tensor]
    losses: dict[str, Tensor] = field(default_factory=dict)
    loss: Tensor | None = None
    head_probs: dict[str, Tensor] = field(default_factory=dict)


class BehaviourGraph:
    """The DAG of a model config: head names in edge order and each output's list of paths."""

    def __init__(self, graph_cfg: dict):
        self.edges: dict[str, list[tuple[str, str, bool]]] = {n: [] for n in graph_cfg["nodes"]}
        head_src: dict[str, str] = {}
        for edge in graph_cfg["edges"]:
            name = edge.get("head") or edge["complement"]
            if "head" in edge:
                if name in head_src:
                    raise ValueError(f"graph.edges: head {name!r} is used by two edges")
                head_src[name] = edge["src"]
            self.edges[edge["src"]].append((edge["dst"], name, "complement" in edge))
        for edge in graph_cfg["edges"]:
            if "complement" in edge and head_src[edge["complement"]] != edge["src"]:
                raise ValueError(
                    f"graph.edges: complement of {edge['complement']!r} must leave the same node as its head"
                )
        self.head_names = list(head_src)
        self._check_acyclic()
        self.outputs: dict[str, list[Path]] = {}
        for name, (src, dst) in graph_cfg["outputs"].items():
            paths = self.paths(src, dst)
            if not paths:
                raise ValueError(f"graph.outputs.{name}: no path from {src!r} to {dst!r}")
            self.outputs[name] = paths

    def _check_acyclic(self) -> None:
        state: dict[str, int] = {}

        def visit(node: str) -> None:
            state[node] = 1
            for dst, _, _ in self.edges[node]:
                if state.get(dst) == 1:
                    raise ValueError(f"graph.edges: cycle through node {dst!r}")
                if dst not in state:
                    visit(dst)
            state[node] = 2

        for node in self.edges:
            if node not in state:
                visit(node)

    def paths(self, src: str, dst: str) -> list[Path]:
        if src == dst:
            return [[]]
        found: list[Path] = []
        for nxt, head, complement in self.edges[src]:
            found.extend([(head, complement)] + rest for rest in self.paths(nxt, dst))
        return found

    def compose(self, head_probs: dict[str, Tensor], name: str) -> Tensor:
        total = None
        for path in self.outputs[name]:
            term = None
            for head, complement in path:
                p = 1.0 - head_probs[head] if complement else head_probs[head]
                term = p if term is None else term * p
            if term is None:  # empty path (src == dst): probability one
                term = torch.ones_like(next(iter(head_probs.values())))
            total = term if total is None else total + term
        return total


class BehaviourGraphModel(nn.Module):
    def __init__(self, cfg: dict, field_buckets: list[int], num_dense: int, field_names: list[str] | None = None):
        super().__init__()
        self.cfg = cfg
        self.graph = BehaviourGraph(cfg["graph"])
        self.eps = cfg["prob_eps"]
        self.feature_dropout = cfg["feature_dropout"]
        self.num_dense = num_dense
        self.shared = cfg["embedding"]["shared"]

        def make_input() -> InputLayer:
            return InputLayer(field_buckets, num_dense, cfg["embedding"], cfg["dense"], field_names)

        self.inputs = make_input() if self.shared else None
        self.head_inputs = nn.ModuleDict({} if self.shared else {h: make_input() for h in self.graph.head_names})
        width = (self.inputs or next(iter(self.head_inputs.values()))).width
        tower = cfg["tower"]
        self.heads = nn.ModuleDict(
            {h: mlp(width, tower["hidden"], 1, tower["activation"], tower["dropout"]) for h in self.graph.head_names}
        )
        con = cfg["contrastive"]
        self.contrastive = ContrastiveBranch(con, width, self.inputs.column_groups()) if con["enabled"] else None
        self.alpha = con["alpha"]

    # -- parameters -------------------------------------------------------------------------------
    def _input_layers(self) -> list[InputLayer]:
        return [self.inputs] if self.inputs is not None else list(self.head_inputs.values())

    def sparse_embedding_parameters(self) -> list[nn.Parameter]:
        """The hashed-id embedding tables (sparse gradients when embedding.sparse is true)."""
        return [layer.embedding.table.weight for layer in self._input_layers()]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an embedding table (towers, dense projection, encoder)."""
        table_ids = {id(p) for p in self.sparse_embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in table_ids]

    @property
    def uses_sparse_gradients(self) -> bool:
        return bool(self.cfg["embedding"]["sparse"])

    # -- scoring ----------------------------------------------------------------------------------
    def _encode(self, layer: InputLayer, sparse: Tensor, dense: Tensor) -> Tensor:
        drop = self.feature_dropout if self.training else 0.0
        return layer(sparse, dense, field_dropout=drop)

    def head_probabilities(self, sparse: Tensor, dense: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """Each head's conditional probability [B], and the shared representation e (None if unshared)."""
        shared_e = self._encode(self.inputs, sparse, dense) if self.inputs is not None else None
        out = {}
        for name, head in self.heads.items():
            e = shared_e if shared_e is not None else self._encode(self.head_inputs[name], sparse, dense)
            out[name] = torch.sigmoid(head(e).squeeze(1).float())
        return out, shared_e

    def compose(self, head_probs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            name: self.graph.compose(head_probs, name).clamp(self.eps, 1.0 - self.eps) for name in self.graph.outputs
        }

    def score(self, sparse: Tensor, dense: Tensor) -> dict[str, Tensor]:
        """Named probabilities without any input checks (the TorchScript export traces this)."""
        head_probs, _ = self.head_probabilities(sparse, dense)
        return self.compose(head_probs)

    # -- training ---------------------------------------------------------------------------------
    def _check_batch(self, batch: dict[str, Tensor]) -> None:
        if "sparse" not in batch:
            raise ValueError("batch: missing key 'sparse' (LongTensor [B, F])")
        for layer in self._input_layers():
            layer.embedding.check_ids(batch["sparse"])
        dense = batch.get("dense")
        if self.num_dense and (dense is None or dense.dim() != 2 or dense.shape[1] != self.num_dense):
            shape = None if dense is None else list(dense.shape)
            raise ValueError(f"batch 'dense': expected shape [B, {self.num_dense}], got {shape}")

    def _labels_needed(self) -> set[str]:
        needed = set()
        for spec in self.cfg["losses"].values():
            needed.update(t.strip() for t in spec["target"].split("*"))
            if spec["where"]:
                needed.add(spec["where"])
        if self.contrastive is not None:
            needed.update(self.contrastive.labels_needed())
        return needed

    def _task_loss(self, spec: dict, probs: dict, head_probs: dict, batch: dict) -> Tensor:
        pred = probs[spec["output"]]
        if spec["detach_heads"]:
            detached = {h: (p.detach() if h in spec["detach_heads"] else p) for h, p in head_probs.items()}
            pred = self.graph.compose(detached, spec["output"]).clamp(self.eps, 1.0 - self.eps)
        target = torch.ones_like(pred)
        for label in spec["target"].split("*"):
            target = target * batch[label.strip()].float()
        # Written out (pred is already clamped) so it is also safe under autocast.
        ce = -(target * torch.log(pred) + (1.0 - target) * torch.log1p(-pred))
        if not spec["where"]:
            return ce.mean()
        keep = batch[spec["where"]] > 0.5
        return ce[keep].mean() if bool(keep.any()) else (pred * 0.0).sum()

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        self._check_batch(batch)
        sparse = batch["sparse"]
        dense = batch.get("dense")
        if dense is None:
            dense = torch.zeros(sparse.shape[0], 0, device=sparse.device)
        head_probs, shared_e = self.head_probabilities(sparse, dense)
        probs = self.compose(head_probs)
        out = ModelOutput(probs=probs, head_probs=head_probs)
        needed = self._labels_needed()
        present = needed & set(batch)
        if not present:
            return out
        if present != needed:
            raise ValueError(f"batch: missing label(s) {sorted(needed - present)} needed by the losses")
        for name, spec in self.cfg["losses"].items():
            out.losses[name] = self._task_loss(spec, probs, head_probs, batch)
        total = sum(self.cfg["losses"][n]["weight"] * v for n, v in out.losses.items())
        if self.contrastive is not None and self.training:
            # The branch sees the unperturbed embedding (no feature dropout), as the authors' code.
            e = shared_e if not self.feature_dropout else self.inputs(sparse, dense)
            out.losses["contrastive"] = self.contrastive(e, batch)
            total = total + self.alpha * out.losses["contrastive"]
        out.loss = total
        return out


def build_model(model_cfg: dict, field_buckets: list[int], num_dense: int, *,
                field_names: list[str] | None = None) -> BehaviourGraphModel:  # fmt: skip
    """Build the model described by a config (as load_model_config returns it; validated again here)."""
    source = f"model config {model_cfg.get('name', '')!r}"
    validate_model_config(model_cfg, source)
    return BehaviourGraphModel(resolve(model_cfg), list(field_buckets), int(num_dense), field_names)
