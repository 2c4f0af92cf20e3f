"""A pretrained DINOv2 ViT (S/B/L/g, patch 14, optional register tokens) as a frozen encoder.

A faithful Flax port of the Hugging Face `Dinov2Model` / `Dinov2WithRegistersModel` forward:
patch embedding (a strided conv), CLS token, learned position embeddings interpolated to the
input's patch grid (bicubic as `torch.nn.functional.interpolate(align_corners=False)`; with
register tokens the antialiased variant, as the registers model does), register tokens after
CLS, pre-LN blocks with LayerScale on both branches, a GELU (exact erf) or SwiGLU MLP, the final
LayerNorm. Outputs what the decoder expects of an encoder:
  * `tokens` [B, T, D]: the final-LayerNorm'd patch tokens (registers and CLS excluded),
    T = (input_size / 14)^2;
  * `cls` [B, D]: the final-LayerNorm'd CLS token (HF's `pooler_output`).

`Dinov2Encoder.__call__` takes images as the rest of the system holds them (float [B, H, W, C]
in [-1, 1], C = 1 or 3) and preprocesses them as DINOv2 expects: to [0, 1], grey replicated to
RGB, resized to `input_size` (bicubic, antialiased), normalised by the ImageNet mean and std.
`encode_pixels` is the bare forward on already-normalised pixels (the reference comparison).

Weights come from a local file only (`load_pretrained`): a Hugging Face checkpoint directory
(config.json + model.safetensors, or a sharded model.safetensors.index.json) or a single
.safetensors file. Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from semantica_jax.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Every released DINOv2 (S/14 384/6, B/14 768/12, L/14 1024/16, g/14 1536/24) uses 64-dim heads;
# used only when a bare .safetensors file comes without a config.json beside it.
DEFAULT_HEAD_DIM = 64


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
    """Architecture of a DINOv2 checkpoint plus how this system feeds it.

    Attributes:
      width, depth, heads: hidden size D, layers, attention heads.
      patch_size: 14 for every released model.
      channels: input channels of the patch embedding (3).
      pos_grid: side of the checkpoint's position-embedding grid (37 for 518 px).
      mlp_hidden: hidden width of the MLP (per branch for SwiGLU).
      swiglu: SwiGLU MLP (DINOv2-g) instead of fc1-GELU-fc2.
      num_registers: register tokens (0 without).
      antialias: antialiased bicubic interpolation of the position embeddings (registers
        models) instead of plain bicubic.
      layer_norm_eps: epsilon of every LayerNorm.
      qkv_bias: biases on the query/key/value projections.
      input_size: side the images are resized to before the patch embedding (multiple of
        patch_size); T = (input_size / patch_size)^2.
      image_size, data_channels: the images this system gives it (before preprocessing).
    """

    width: int
    depth: int
    heads: int
    patch_size: int
    channels: int
    pos_grid: int
    mlp_hidden: int
    swiglu: bool = False
    num_registers: int = 0
    antialias: bool = False
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    input_size: int = 224
    image_size: int = 224
    data_channels: int = 3

    @property
    def num_tokens(self) -> int:
        """T: patch tokens the decoder cross-attends to (CLS and registers excluded)."""
        return (self.input_size // self.patch_size) ** 2

    def module(self) -> Dinov2Encoder:
        return Dinov2Encoder(self)


# --- position-embedding interpolation -------------------------------------------------------


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter a, at distances x."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.cache
def torch_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of torch's bicubic resize (align_corners=False, no antialias).

    torch maps output i to source (i + 0.5) * in / out - 0.5, takes the 4 neighbours
    floor(src) - 1 .. floor(src) + 2 clamped to the border, weighted by the cubic kernel
    with a = -0.75. No library resizes with that kernel (jax.image uses a = -0.5), and the
    port must match the reference, so the 4-tap weights are spelled out here.
    """
    weights = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        src = (i + 0.5) * scale - 0.5
        base = int(np.floor(src))
        frac = src - base
        for tap in range(-1, 3):
            j = min(max(base + tap, 0), in_size - 1)
            weights[i, j] += _cubic(np.asarray(frac - tap), -0.75)
    return weights.astype(np.float32)


def interpolate_positions(pos: jax.Array, grid: int, new_grid: int, antialias: bool) -> jax.Array:
    """Patch position embeddings [grid^2, D] -> [new_grid^2, D] as Hugging Face does.

    Plain bicubic (`Dinov2Model`) or antialiased bicubic (`Dinov2WithRegistersModel`, the
    PIL-style kernel with a = -0.5 widened by the downscale factor, as jax.image's 'cubic').
    """
    if new_grid == grid:
        return pos
    dim = pos.shape[-1]
    square = pos.reshape(grid, grid, dim).astype(jnp.float32)
    if antialias:
        out = jax.image.resize(square, (new_grid, new_grid, dim), "cubic", antialias=True)
    else:
        m = jnp.asarray(torch_bicubic_matrix(grid, new_grid))
        out = jnp.einsum("ih,jw,hwd->ijd", m, m, square, precision="highest")
    return out.reshape(new_grid * new_grid, dim).astype(pos.dtype)


# --- the module -------------------------------------------------------------------------------


class Dinov2Layer(nn.Module):
    """Pre-LN block with LayerScale: x + ls1 * attn(LN(x)), then x + ls2 * mlp(LN(x))."""

    config: Dinov2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        norm = functools.partial(nn.LayerNorm, epsilon=c.layer_norm_eps, use_fast_variance=False)
        b, t, _ = x.shape
        h = norm(name="norm1")(x)
        q, k, v = (
            nn.Dense(c.width, use_bias=c.qkv_bias, name=name)(h).reshape(b, t, c.heads, -1)
            for name in ("query", "key", "value")
        )
        attn = jax.nn.dot_product_attention(q, k, v).reshape(b, t, c.width)
        attn = nn.Dense(c.width, name="attn_out")(attn)
        x = x + attn * self.param("layer_scale1", nn.initializers.ones, (c.width,))
        h = norm(name="norm2")(x)
        if c.swiglu:
            gate = nn.Dense(c.mlp_hidden, name="mlp_gate")(h)
            up = nn.Dense(c.mlp_hidden, name="mlp_up")(h)
            h = nn.Dense(c.width, name="mlp_down")(nn.silu(gate) * up)
        else:
            h = nn.gelu(nn.Dense(c.mlp_hidden, name="mlp_fc1")(h), approximate=False)
            h = nn.Dense(c.width, name="mlp_fc2")(h)
        return x + h * self.param("layer_scale2", nn.initializers.ones, (c.width,))


class Dinov2Encoder(nn.Module):
    """The DINOv2 ViT; see the module docstring for inputs and outputs."""

    config: Dinov2Config

    def setup(self):
        c = self.config
        init = nn.initializers.normal(stddev=0.02)
        self.patch_embed = nn.Conv(
            c.width, (c.patch_size, c.patch_size), strides=c.patch_size, padding="VALID"
        )
        self.cls_token = self.param("cls_token", init, (1, 1, c.width))
        self.pos_embedding = self.param("pos_embedding", init, (1, c.pos_grid**2 + 1, c.width))
        if c.num_registers:
            self.register_tokens = self.param(
                "register_tokens", init, (1, c.num_registers, c.width)
            )
        self.layers = [Dinov2Layer(c, name=f"layer_{i}") for i in range(c.depth)]
        self.final_norm = nn.LayerNorm(epsilon=c.layer_norm_eps, use_fast_variance=False)

    def encode_pixels(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """pixels float [B, S, S, channels], normalised -> (tokens [B, T, D], cls [B, D])."""
        c = self.config
        b, height, width, _ = pixels.shape
        if height != width or height % c.patch_size:
            raise ValueError(
                f"DINOv2 takes square inputs with a side divisible by {c.patch_size}, got "
                f"{height}x{width}"
            )
        x = self.patch_embed(pixels.astype(jnp.float32))
        grid = x.shape[1]
        x = x.reshape(b, grid * grid, c.width)
        pos = self.pos_embedding[0]
        patch_pos = interpolate_positions(pos[1:], c.pos_grid, grid, c.antialias)
        x = jnp.concatenate([jnp.broadcast_to(self.cls_token, (b, 1, c.width)), x], axis=1)
        x = x + jnp.concatenate([pos[:1], patch_pos], axis=0)[None]
        if c.num_registers:
            registers = jnp.broadcast_to(self.register_tokens, (b, c.num_registers, c.width))
            x = jnp.concatenate([x[:, :1], registers, x[:, 1:]], axis=1)
        for layer in self.layers:
            x = layer(x)
        x = self.final_norm(x)
        return x[:, 1 + c.num_registers :], x[:, 0]

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images float [B, H, W, C] in [-1, 1] -> (tokens [B, T, D], cls [B, D])."""
        return self.encode_pixels(preprocess(images, self.config))


def preprocess(images: jax.Array, config: Dinov2Config) -> jax.Array:
    """[-1, 1] images [B, H, W, C] -> DINOv2 pixels [B, S, S, 3] (S = input_size).

    To [0, 1]; one channel replicated to the model's; bicubic antialiased resize to S x S;
    (x - ImageNet mean) / ImageNet std.
    """
    x = (jnp.asarray(images, jnp.float32) + 1.0) * 0.5
    if x.shape[-1] != config.channels:
        if x.shape[-1] != 1:
            raise ValueError(
                f"DINOv2 takes {config.channels}-channel images, got {x.shape[-1]} channels"
            )
        x = jnp.repeat(x, config.channels, axis=-1)
    size = config.input_size
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "cubic", antialias=True)
    mean = jnp.asarray(IMAGENET_MEAN[: config.channels], jnp.float32)
    std = jnp.asarray(IMAGENET_STD[: config.channels], jnp.float32)
    return (x - mean) / std


# --- loading a Hugging Face checkpoint ---------------------------------------------------------

_PREFIX_ANCHOR = "embeddings.cls_token"
# Hugging Face names (hub layout, and transformers >= 5's in-memory names) -> ours.
_LAYER_NAMES = {
    "norm1": ("norm1",),
    "norm2": ("norm2",),
    "query": ("attention.attention.query", "attention.q_proj"),
    "key": ("attention.attention.key", "attention.k_proj"),
    "value": ("attention.attention.value", "attention.v_proj"),
    "attn_out": ("attention.output.dense", "attention.o_proj"),
    "mlp_fc1": ("mlp.fc1",),
    "mlp_fc2": ("mlp.fc2",),
    "mlp_down": ("mlp.weights_out", "mlp.down_proj"),
}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise UserError(
            f"{path} is not a readable .safetensors checkpoint ({err}); point "
            "encoder.pretrained at a Hugging Face DINOv2 directory or its model.safetensors"
        ) from None


def _checkpoint_files(path: str) -> tuple[list[str], str]:
    """(weight files, config.json path or "") of a checkpoint directory or file."""
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.isfile(single):
            files = [single]
        elif os.path.isfile(index):
            try:
                with open(index) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise UserError(f"{index} is not a safetensors index ({err})") from None
            files = [os.path.join(path, s) for s in shards]
        else:
            files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise UserError(
                f"{path} holds no .safetensors weights (model.safetensors or a sharded index); "
                "download the checkpoint with its safetensors files"
            )
        config = os.path.join(path, "config.json")
    elif os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise UserError(
                f"{path} is not a .safetensors file; encoder.pretrained takes a Hugging Face "
                "checkpoint directory or a .safetensors file"
            )
        files = [path]
        config = os.path.join(os.path.dirname(path), "config.json")
    else:
        raise UserError(f"encoder.pretrained={path} does not exist; give a local checkpoint path")
    return files, config if os.path.isfile(config) else ""


def _strip_prefix(tensors: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    """Drops a wrapper prefix ('dinov2.', 'backbone.', ...) found from the CLS token's key."""
    anchors = [k for k in tensors if k.endswith(_PREFIX_ANCHOR)]
    if not anchors:
        raise UserError(
            f"{path} is not a DINOv2 checkpoint: no '{_PREFIX_ANCHOR}' key (has e.g. "
            f"{', '.join(sorted(tensors)[:3]) or 'no tensors'})"
        )
    prefix = anchors[0][: -len(_PREFIX_ANCHOR)]
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _read_json_config(config_path: str) -> dict:
    if not config_path:
        return {}
    try:
        with open(config_path) as f:
            value = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"{config_path} is not a readable config.json ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"{config_path} is not a Hugging Face config (not a JSON object)")
    return value


def _architecture(tensors: dict[str, np.ndarray], hf: dict, path: str) -> dict:
    """Dinov2Config fields (architecture only) from the weights and config.json."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in tensors:
            raise UserError(f"{path}: missing key '{key}'; not a complete DINOv2 checkpoint")
        return tuple(tensors[key].shape)

    width = shape("embeddings.cls_token")[-1]
    proj = shape("embeddings.patch_embeddings.projection.weight")  # [D, C, p, p]
    depth = 1 + max(
        (int(m.group(1)) for k in tensors if (m := re.match(r"encoder\.layer\.(\d+)\.", k))),
        default=-1,
    )
    if depth < 1:
        raise UserError(f"{path}: no 'encoder.layer.N.*' keys; not a DINOv2 checkpoint")
    positions = shape("embeddings.position_embeddings")[1] - 1
    grid = int(round(positions**0.5))
    if grid * grid != positions:
        raise UserError(f"{path}: {positions} position embeddings do not form a square grid")
    registers = tensors.get("embeddings.register_tokens")
    swiglu = "encoder.layer.0.mlp.fc1.weight" not in tensors
    if swiglu:
        down = "encoder.layer.0.mlp.weights_out.weight"
        if down not in tensors:
            down = "encoder.layer.0.mlp.down_proj.weight"
        hidden = shape(down)[1]
    else:
        hidden = shape("encoder.layer.0.mlp.fc1.weight")[0]
    heads = int(hf.get("num_attention_heads", max(1, width // DEFAULT_HEAD_DIM)))
    if width % heads:
        raise UserError(f"{path}: hidden size {width} is not a multiple of {heads} heads")
    return dict(
        width=width,
        depth=depth,
        heads=heads,
        patch_size=proj[-1],
        channels=proj[1],
        pos_grid=grid,
        mlp_hidden=hidden,
        swiglu=swiglu,
        num_registers=0 if registers is None else int(registers.shape[1]),
        antialias=registers is not None,
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-6)),
        qkv_bias="encoder.layer.0.attention.attention.query.bias" in tensors
        or "encoder.layer.0.attention.q_proj.bias" in tensors,
    )


def _layer_params(tensors, i: int, arch: dict, path: str) -> dict[str, Any]:
    """One layer's Flax params from its Hugging Face tensors."""

    def find(ours: str, suffix: str) -> np.ndarray | None:
        for name in _LAYER_NAMES[ours]:
            key = f"encoder.layer.{i}.{name}.{suffix}"
            if key in tensors:
                return tensors[key]
        return None

    def get(ours: str, suffix: str) -> np.ndarray:
        value = find(ours, suffix)
        if value is None:
            raise UserError(
                f"{path}: missing key 'encoder.layer.{i}.{_LAYER_NAMES[ours][0]}.{suffix}'"
            )
        return value

    def dense(ours: str, bias: bool = True) -> dict[str, np.ndarray]:
        out = {"kernel": get(ours, "weight").T}
        if bias:
            out["bias"] = get(ours, "bias")
        return out

    layer = {
        "norm1": {"scale": get("norm1", "weight"), "bias": get("norm1", "bias")},
        "norm2": {"scale": get("norm2", "weight"), "bias": get("norm2", "bias")},
        "attn_out": dense("attn_out"),
        **{name: dense(name, arch["qkv_bias"]) for name in ("query", "key", "value")},
    }
    for j in (1, 2):
        key = f"encoder.layer.{i}.layer_scale{j}.lambda1"
        if key not in tensors:
            raise UserError(f"{path}: missing key '{key}'")
        layer[f"layer_scale{j}"] = tensors[key]
    if arch["swiglu"]:
        fused = f"encoder.layer.{i}.mlp.weights_in"
        if f"{fused}.weight" in tensors:  # hub layout: gate and up stacked on the output axis
            w, b = tensors[f"{fused}.weight"], tensors[f"{fused}.bias"]
            h = w.shape[0] // 2
            layer["mlp_gate"] = {"kernel": w[:h].T, "bias": b[:h]}
            layer["mlp_up"] = {"kernel": w[h:].T, "bias": b[h:]}
        else:
            for ours, theirs in (("mlp_gate", "gate_proj"), ("mlp_up", "up_proj")):
                key = f"encoder.layer.{i}.mlp.{theirs}"
                if f"{key}.weight" not in tensors:
                    raise UserError(f"{path}: missing key '{fused}.weight' (or '{key}.weight')")
                layer[ours] = {"kernel": tensors[f"{key}.weight"].T, "bias": tensors[f"{key}.bias"]}
        layer["mlp_down"] = dense("mlp_down")
    else:
        layer["mlp_fc1"] = dense("mlp_fc1")
        layer["mlp_fc2"] = dense("mlp_fc2")
    return layer


def load_pretrained(
    path: str, *, input_size: int, image_size: int, data_channels: int
) -> tuple[Dinov2Config, Any]:
    """Reads a local DINOv2 checkpoint into (config, Flax params), checking every shape.

    Args:
      path: a Hugging Face checkpoint directory or a .safetensors file (config.json beside it
        is read when present; without it, heads = width / 64 as in every released model).
      input_size: side the images are resized to (multiple of the patch size).
      image_size, data_channels: the images the system will pass (before preprocessing).

    Returns:
      (Dinov2Config, params) with params float32 in `Dinov2Encoder`'s tree.

    Raises:
      UserError naming the file or the key for a missing file, a non-checkpoint, a missing
      key or a shape that does not fit.
    """
    path = os.path.abspath(os.path.expanduser(path))
    files, config_path = _checkpoint_files(path)
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        tensors.update(_read_safetensors(name))
    tensors = _strip_prefix(tensors, path)
    arch = _architecture(tensors, _read_json_config(config_path), path)
    if input_size < arch["patch_size"] or input_size % arch["patch_size"]:
        raise UserError(
            f"encoder.input_size={input_size} is not a positive multiple of the checkpoint's "
            f"patch size {arch['patch_size']} (e.g. 224)"
        )
    if data_channels not in (1, arch["channels"]):
        raise UserError(
            f"data.channels={data_channels} cannot feed a {arch['channels']}-channel DINOv2"
        )
    config = Dinov2Config(
        **arch,
        input_size=int(input_size),
        image_size=int(image_size),
        data_channels=int(data_channels),
    )
    conv = tensors["embeddings.patch_embeddings.projection.weight"]  # [D, C, p, p]
    params: dict[str, Any] = {
        "patch_embed": {
            "kernel": conv.transpose(2, 3, 1, 0),
            "bias": tensors.get("embeddings.patch_embeddings.projection.bias"),
        },
        "cls_token": tensors["embeddings.cls_token"],
        "pos_embedding": tensors["embeddings.position_embeddings"],
        "final_norm": {},
    }
    for ours, theirs in (("scale", "layernorm.weight"), ("bias", "layernorm.bias")):
        if theirs not in tensors:
            raise UserError(f"{path}: missing key '{theirs}'")
        params["final_norm"][ours] = tensors[theirs]
    if params["patch_embed"]["bias"] is None:
        raise UserError(f"{path}: missing key 'embeddings.patch_embeddings.projection.bias'")
    if config.num_registers:
        params["register_tokens"] = tensors["embeddings.register_tokens"]
    for i in range(config.depth):
        params[f"layer_{i}"] = _layer_params(tensors, i, arch, path)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    _check_shapes(config, params, path)
    return config, params


def _check_shapes(config: Dinov2Config, params: Any, path: str) -> None:
    """Compares every loaded array with the shape the module creates; one line per mismatch."""
    module = config.module()
    dummy = jnp.zeros((1, config.input_size, config.input_size, config.channels), jnp.float32)
    expected = jax.eval_shape(
        lambda: module.init(jax.random.key(0), dummy, method=Dinov2Encoder.encode_pixels)
    )["params"]
    flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    flat_got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for key, want in flat_expected.items():
        got = flat_got.get(key)
        name = jax.tree_util.keystr(key)
        if got is None:
            raise UserError(f"{path}: no weights for {name}")
        if tuple(got.shape) != tuple(want.shape):
            raise UserError(
                f"{path}: {name} has shape {tuple(got.shape)}, the architecture needs "
                f"{tuple(want.shape)} (a mixed or edited checkpoint)"
            )
