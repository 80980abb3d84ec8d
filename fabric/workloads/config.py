"""The configuration of a training run, checked once, before anything starts."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import InvalidArgument
from .model import Layout, parse_count, parse_layers, widths_for_params

MODES = ("pooled", "replicated")
INJECT_MODES = ("off", "virtual", "spin")
DEFAULT_PARAMS = "100k"


@dataclass
class TrainConfig:
    """Everything a run needs (the CLI flags of ``fabric run train``).

    ``params`` (e.g. "50M") picks the widths; ``layers`` (e.g.
    "1024,4096,4096,1024" or a tuple) gives them.  ``topology``/``inject``/
    ``devices`` only matter when the run starts its own cluster (``inject``
    also overrides the running cluster's mode for the workers).
    """

    hosts: int = 3
    mode: str = "pooled"
    steps: int = 20
    seed: int = 0
    params: str | int | None = None
    layers: str | tuple | list | None = None
    batch: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    placement: str = "interleave"
    topology: str | None = None
    inject: str | None = None
    devices: int | None = None
    state_dir: str | None = None
    timeout_ms: int = 60_000
    widths: tuple = field(default=(), init=False)

    def __post_init__(self):
        for name in ("hosts", "steps", "batch", "timeout_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgument(f"{name} must be a positive int, got {v!r}")
        if self.mode not in MODES:
            raise InvalidArgument(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.inject is not None and self.inject not in INJECT_MODES:
            raise InvalidArgument(f"inject must be one of {', '.join(INJECT_MODES)}, "
                                  f"got {self.inject!r}")
        if self.batch < self.hosts:
            raise InvalidArgument(f"batch ({self.batch}) must be at least the number of hosts "
                                  f"({self.hosts}): every worker trains on a non-empty shard")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InvalidArgument(f"seed must be an int, got {self.seed!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InvalidArgument(f"lr must be a positive number, got {self.lr!r}")
        if self.params is not None and self.layers is not None:
            raise InvalidArgument("give --params or --layers, not both")
        if self.layers is not None:
            widths = (parse_layers(self.layers) if isinstance(self.layers, str)
                      else tuple(int(w) for w in self.layers))
        else:
            widths = widths_for_params(parse_count(self.params or DEFAULT_PARAMS))
        self.widths = Layout(widths).widths

    @property
    def layout(self) -> Layout:
        return Layout(self.widths)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d
