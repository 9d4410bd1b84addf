"""The twelve challenge configurations and where their files live.

Everything that needs a bias, a file name, a URL or a published count asks
this module; no other module spells those out.

Examples
--------
>>> cfg = config(1024, 120)
>>> cfg.bias, cfg.edges
(-0.3, 3932160)
>>> cfg.layer_name(7)
'n1024-l7.tsv'
"""

from dataclasses import dataclass

from .errors import GraphChallengeError

NEURONS = (1024, 4096, 16384, 65536)
LAYERS = (120, 480, 1920)
MAX_LAYERS = max(LAYERS)

#: The official server; ``--base-url`` or ``$GRAPHCHALLENGE_BASE_URL`` override it.
BASE_URL = "https://graphchallenge.s3.amazonaws.com/synthetic/sparsechallenge_2019"

#: Activations are clamped to this value after every layer.
YMAX = 32.0

#: Nonzeros in every row and every column of every challenge layer.
EDGES_PER_NEURON = 32

_BIAS = {1024: -0.30, 4096: -0.35, 16384: -0.40, 65536: -0.45}

# Nonzeros of the full 60,000-image input file of each size.
_INPUT_NNZ = {1024: 6_374_505, 4096: 25_019_051, 16384: 98_858_913, 65536: 392_191_985}

# Categories in the official truth files (the same for every depth).
_TRUTH_CATEGORIES = {1024: 1812, 4096: None, 16384: 1918, 65536: 1994}

#: Rows of the official input files.
N_IMAGES = 60_000


@dataclass(frozen=True)
class Config:
    """One challenge configuration: ``neurons`` per layer and ``layers`` deep."""

    neurons: int
    layers: int

    @property
    def official(self):
        """True for the twelve published configurations."""
        return self.layers in LAYERS

    @property
    def name(self):
        return f"neuron{self.neurons}-l{self.layers}"

    @property
    def bias(self):
        return _BIAS[self.neurons]

    @property
    def edges_per_layer(self):
        return EDGES_PER_NEURON * self.neurons

    @property
    def edges(self):
        """Edges of the whole network (the challenge's ``sum_k nnz(W_k)``)."""
        return self.edges_per_layer * self.layers

    @property
    def input_nnz(self):
        """Nonzeros of the official 60,000-image input file."""
        return _INPUT_NNZ[self.neurons]

    @property
    def truth_categories(self):
        """Category count of the official truth file, or None where unknown."""
        return _TRUTH_CATEGORIES[self.neurons]

    # File names, as on the server.
    @property
    def network_dir(self):
        return f"neuron{self.neurons}"

    @property
    def tarball(self):
        return f"neuron{self.neurons}.tar.gz"

    @property
    def inputs_name(self):
        return f"sparse-images-{self.neurons}.tsv.gz"

    @property
    def truth_name(self):
        return f"neuron{self.neurons}-l{self.layers}-categories.tsv"

    def layer_name(self, k):
        """File name of layer ``k`` (1-based), e.g. ``n1024-l1.tsv``."""
        return f"n{self.neurons}-l{k}.tsv"

    # Paths relative to the server's base URL (and to a data folder laid out like it).
    @property
    def network_path(self):
        return f"dnn/{self.tarball}"

    @property
    def inputs_path(self):
        return f"mnist/{self.inputs_name}"

    @property
    def truth_path(self):
        return f"dnn/{self.truth_name}"

    def url(self, path, base_url=BASE_URL):
        """Full URL of ``path`` (one of the ``*_path`` properties) under ``base_url``."""
        return f"{base_url.rstrip('/')}/{path}"


def config(neurons, layers):
    """Return the :class:`Config` for ``neurons`` x ``layers``.

    ``neurons`` must be a challenge size; ``layers`` may be any depth (the
    official ones are 120, 480 and 1920, see :attr:`Config.official`; other
    depths serve generated challenges and the first layers of a download).

    Raises
    ------
    GraphChallengeError
        If ``neurons`` is not a challenge size or ``layers`` is not positive.
    """
    if neurons not in NEURONS:
        raise GraphChallengeError(
            f"--neurons must be one of {', '.join(map(str, NEURONS))} (got {neurons})")
    if not isinstance(layers, int) or layers < 1:
        raise GraphChallengeError(f"--layers must be a positive integer (got {layers})")
    return Config(neurons, layers)


def all_configs():
    """The twelve configurations, smallest first."""
    return [Config(n, l) for n in NEURONS for l in LAYERS]


def bias_for(neurons):
    """Bias of the challenge network with ``neurons`` neurons per layer."""
    if neurons not in _BIAS:
        raise GraphChallengeError(
            f"no challenge bias for {neurons} neurons; use one of {', '.join(map(str, NEURONS))}")
    return _BIAS[neurons]
