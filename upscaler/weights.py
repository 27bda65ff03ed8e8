"""Resolving, loading and writing FlashVSR checkpoints (official file names, key names and formats).

``resolve_weights`` finds the files a variant needs (a local directory, the Hugging Face cache or a
download of only those files, or random checkpoints written once into a cache directory);
``load_models`` builds the modules and loads them **strictly**: a missing or unexpected key, or a
wrong shape, raises :class:`CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import safetensors.torch
import torch
from torch import nn

from upscaler.configfiles import load_config
from upscaler.models.config import ModelPreset, load_preset
from upscaler.models.dit import WanDiT
from upscaler.models.lq_proj import LQ_PROJ_CLASSES
from upscaler.models.tcdecoder import TCDecoder
from upscaler.models.wan_vae import WanVAEDecoder, classify_vae_key

log = logging.getLogger(__name__)

REAL_PRESET = "wan2.1-1.3b"
RANDOM_SPECS = {"random": REAL_PRESET, "random-small": "small"}
CACHE_DIR_ENV = "FLASHVSR_CACHE_DIR"
DECODER_FILE = {"tcdecoder": "tcdecoder", "wan-vae": "vae"}
VARIANT_DECODERS = {"tiny": ("tcdecoder",), "tiny-long": ("tcdecoder",), "full": ("wan-vae",), "all": ("tcdecoder", "wan-vae")}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class WeightsError(RuntimeError):
    """Weights could not be found or downloaded."""


class CheckpointError(WeightsError):
    """A checkpoint file does not match the model: names the file and the offending key."""

    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {problem}: {key!r}")
        self.file = str(file)
        self.key = key


@dataclass(frozen=True)
class WeightFiles:
    """Paths of the checkpoint files of one model version (None: not needed by the variant)."""

    model_version: str
    preset: str
    label: str
    dit: Path
    lq_proj: Path
    prompt: Path
    tcdecoder: Path | None = None
    vae: Path | None = None

    def decoder_file_or_none(self, kind: str) -> Path | None:
        """Checkpoint of decoder ``kind`` if it was resolved."""
        return getattr(self, DECODER_FILE[kind])

    def decoder_file(self, kind: str) -> Path:
        """Checkpoint of decoder ``kind`` ("tcdecoder" or "wan-vae"); error when it was not resolved."""
        path = getattr(self, DECODER_FILE[kind])
        if path is None:
            raise WeightsError(f"the {kind} checkpoint was not resolved for these weights ({self.label})")
        return path


@dataclass
class LoadedModels:
    """The modules of one pipeline, on the device, in eval mode; the DiT is already prepared."""

    dit: WanDiT
    lq_proj: nn.Module
    decoder: nn.Module
    context: torch.Tensor


def _settings() -> dict[str, Any]:
    return load_config("models")["weights"]


def file_names() -> dict[str, str]:
    """Official file name per role (dit, lq_proj, tcdecoder, vae, prompt)."""
    return dict(_settings()["files"])


def cache_dir() -> Path:
    """Where random checkpoints and the downloaded prompt live."""
    return Path(os.environ.get(CACHE_DIR_ENV) or _settings()["cache_dir"]).expanduser()


def _roles(variant: str) -> tuple[str, ...]:
    if variant not in VARIANT_DECODERS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANT_DECODERS)}")
    return ("dit", "lq_proj", "prompt", *(DECODER_FILE[d] for d in VARIANT_DECODERS[variant]))


def _check_version(model_version: str) -> str:
    repos = _settings()["repos"]
    if model_version not in repos:
        raise ValueError(f"model_version must be one of {', '.join(repos)}, got {model_version!r}")
    return repos[model_version]


def _files(paths: Mapping[str, Path], model_version: str, preset: str, label: str) -> WeightFiles:
    return WeightFiles(model_version=model_version, preset=preset, label=label, **paths)


# ---------------------------------------------------------------------------------------------
# resolving


def resolve_weights(
    spec: str | os.PathLike[str],
    model_version: str,
    variant: str = "all",
    *,
    vae_path: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    preset: str = REAL_PRESET,
) -> WeightFiles:
    """Find the checkpoint files ``variant`` ("tiny", "tiny-long", "full" or "all") needs.

    ``spec``: a local directory; ``"auto"`` (Hugging Face cache, then a download of only the needed
    files, unless offline: ``offline`` or ``HF_HUB_OFFLINE``); ``"random"`` / ``"random-small"``
    (random checkpoints of the real / small shapes, written once into :func:`cache_dir`).
    ``vae_path`` points at an existing ``Wan2.1_VAE.pth`` to use instead of the one in ``spec``;
    ``preset`` names the shapes of the checkpoints in a local directory.
    """
    repo = _check_version(model_version)
    roles = _roles(variant)
    spec = str(spec)
    if spec in RANDOM_SPECS:
        files = ensure_random_checkpoints(RANDOM_SPECS[spec], model_version)
    elif spec == "auto":
        files = _resolve_hub(repo, model_version, roles, offline)
    else:
        files = _resolve_dir(Path(spec).expanduser(), model_version, roles, preset)
    if vae_path is not None:
        vae = Path(vae_path).expanduser()
        if not vae.is_file():
            raise WeightsError(f"VAE checkpoint not found: {vae}")
        files = replace(files, vae=vae)
    log.info("weights resolved label=%s version=%s variant=%s preset=%s", files.label, model_version, variant, files.preset)
    return files


def _resolve_dir(root: Path, model_version: str, roles: tuple[str, ...], preset: str) -> WeightFiles:
    names = file_names()
    if not root.is_dir():
        raise WeightsError(f"weights directory not found: {root}")
    paths = {role: root / names[role] for role in roles}
    if not paths["prompt"].is_file() and _cached_prompt().is_file():
        paths["prompt"] = _cached_prompt()
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise WeightsError(f"weights directory {root} lacks: {', '.join(missing)}")
    return _files(paths, model_version, preset, str(root))


def _is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _resolve_hub(repo: str, model_version: str, roles: tuple[str, ...], offline: bool | None) -> WeightFiles:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    names = file_names()
    offline = _is_offline(offline)
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for role in roles:
        try:
            began = time.perf_counter()
            paths[role] = Path(hf_hub_download(repo, names[role], local_files_only=offline))
            log.info("weights file ready repo=%s file=%s seconds=%.1f", repo, names[role], time.perf_counter() - began)
        except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError) offline, not in the cache
            if role == "prompt" and _cached_prompt().is_file():
                paths[role] = _cached_prompt()
            else:
                missing.append(names[role])
        except EntryNotFoundError:
            if role != "prompt":
                raise
            paths[role] = _fetch_prompt(offline)
    if missing:
        raise WeightsError(
            f"FlashVSR {model_version} weights are not available offline: {', '.join(missing)} from the "
            f"Hugging Face repo {repo} (cache {constants.HF_HUB_CACHE}). Download them with "
            f"`huggingface-cli download {repo} {' '.join(missing)}` on a connected machine, or pass a "
            f"directory holding them; the prompt context {names['prompt']} is also accepted in {_cached_prompt().parent}."
        )
    return _files(paths, model_version, REAL_PRESET, f"hf:{repo}")


def _cached_prompt() -> Path:
    return cache_dir() / "prompt" / file_names()["prompt"]


def _fetch_prompt(offline: bool) -> Path:
    """The prompt context file: from the cache, else downloaded from the official code repository."""
    target = _cached_prompt()
    if target.is_file():
        return target
    url = _settings()["prompt"]["url"]
    if offline:
        raise WeightsError(f"offline and the prompt context is missing: download {url} to {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp, urllib.request.urlopen(url, timeout=60) as r:
        shutil.copyfileobj(r, tmp)
    os.replace(tmp.name, target)
    log.info("prompt context downloaded url=%s path=%s", url, target)
    return target


# ---------------------------------------------------------------------------------------------
# loading


def read_state(path: Path) -> dict[str, Any]:
    """Tensors of a checkpoint file (safetensors, or a ``weights_only`` torch pickle)."""
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(path, "<root>", f"expected a state dict, found {type(state).__name__}")
    return state


def load_strict(
    module: nn.Module, state: Mapping[str, Any], file: Path | str, *, ignore: Callable[[str], bool] = lambda key: False
) -> None:
    """Load ``state`` into ``module``: every module key must be present with its shape, and every
    file key must be a module key (or ``ignore``-d); otherwise :class:`CheckpointError`."""
    expected = module.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise CheckpointError(file, key, "missing key")
        found = state[key]
        if not isinstance(found, torch.Tensor):
            raise CheckpointError(file, key, f"not a tensor ({type(found).__name__})")
        if tuple(found.shape) != tuple(value.shape):
            raise CheckpointError(file, key, f"shape {tuple(found.shape)} != expected {tuple(value.shape)}")
    for key in state:
        if key not in expected and not ignore(key):
            raise CheckpointError(file, key, "unexpected key")
    module.load_state_dict({key: state[key] for key in expected}, strict=True)


def _build(factory: Callable[[], nn.Module], state: Mapping[str, Any], file: Path, device: torch.device | str,
           dtype: torch.dtype, **kwargs: Any) -> nn.Module:
    with torch.device(device):
        module = factory()
    load_strict(module, state, file, **kwargs)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _preset(preset: ModelPreset | str | None, files: WeightFiles) -> ModelPreset:
    if isinstance(preset, ModelPreset):
        return preset
    return load_preset(preset or files.preset)


def load_dit(files: WeightFiles, preset: ModelPreset, device: torch.device | str, dtype: torch.dtype) -> WanDiT:
    """The DiT from ``diffusion_pytorch_model_streaming_dmd.safetensors`` (not yet prepared)."""
    return _build(lambda: WanDiT(preset.dit), read_state(files.dit), files.dit, device, dtype)


def lq_layer_count(state: Mapping[str, Any]) -> int:
    """Number of ``linear_layers.N`` in an LQ projection state dict (the reference builds 1)."""
    return len({key.split(".")[1] for key in state if key.startswith("linear_layers.")})


def load_lq_proj(files: WeightFiles, preset: ModelPreset, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """The LQ projection of ``files.model_version`` from ``LQ_proj_in.ckpt`` (layer count from its keys)."""
    state = read_state(files.lq_proj)
    layers = lq_layer_count(state)
    if not 1 <= layers <= preset.dit.num_layers:
        raise CheckpointError(files.lq_proj, "linear_layers", f"{layers} linear layers for {preset.dit.num_layers} DiT blocks")
    cfg = replace(preset.lq_proj, layer_num=layers)
    cls = LQ_PROJ_CLASSES[files.model_version]
    return _build(lambda: cls(cfg), state, files.lq_proj, device, dtype)


def load_decoder(files: WeightFiles, kind: str, preset: ModelPreset, device: torch.device | str,
                 dtype: torch.dtype) -> nn.Module:
    """Decoder ``kind``: "tcdecoder" (``TCDecoder.ckpt``) or "wan-vae" (decoder part of ``Wan2.1_VAE.pth``)."""
    path = files.decoder_file(kind)
    state = read_state(path)
    if kind == "tcdecoder":
        return _build(lambda: TCDecoder(preset.tcdecoder), state, path, device, dtype)
    state = state.get("model_state", state)
    return _build(lambda: WanVAEDecoder(preset.vae_decoder), state, path, device, dtype,
                  ignore=lambda key: classify_vae_key(key) == "unused")


def load_context(files: WeightFiles, preset: ModelPreset) -> torch.Tensor:
    """The fixed prompt context ``(1, S, text_dim)`` from ``posi_prompt.pth``."""
    context = torch.load(files.prompt, map_location="cpu", weights_only=True)
    if not isinstance(context, torch.Tensor):
        raise CheckpointError(files.prompt, "<root>", f"expected a tensor, found {type(context).__name__}")
    if context.dim() == 2:
        context = context.unsqueeze(0)
    if context.dim() != 3 or context.shape[-1] != preset.dit.text_dim:
        raise CheckpointError(files.prompt, "<root>", f"shape {tuple(context.shape)} is not (1, S, {preset.dit.text_dim})")
    return context


def load_models(
    files: WeightFiles,
    preset: ModelPreset | str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    variant: str = "tiny",
) -> LoadedModels:
    """Build and strictly load the DiT (prepared with the prompt), the LQ projection and the
    variant's decoder; ``preset`` defaults to the one the files were resolved for."""
    cfg = _preset(preset, files)
    began = time.perf_counter()
    dit = load_dit(files, cfg, device, dtype)
    context = load_context(files, cfg)
    dit.prepare(context)
    lq_proj = load_lq_proj(files, cfg, device, dtype)
    decoder = load_decoder(files, VARIANT_DECODERS[variant][0], cfg, device, dtype)
    log.info("models loaded label=%s preset=%s variant=%s device=%s dtype=%s seconds=%.1f",
             files.label, cfg.name, variant, device, dtype, time.perf_counter() - began)
    return LoadedModels(dit=dit, lq_proj=lq_proj, decoder=decoder, context=context)


# ---------------------------------------------------------------------------------------------
# writing random checkpoints


def _contiguous(state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {key: value.detach().to(dtype).contiguous() for key, value in state.items()}


def write_random_checkpoints(
    directory: str | os.PathLike[str], preset: ModelPreset | str, model_version: str, seed: int = 0,
    dtype: torch.dtype | None = None,
) -> WeightFiles:
    """Write all five files in the official formats from randomly initialised modules: the DiT as
    safetensors, the LQ projection / TCDecoder / VAE as torch state dicts (the VAE file with
    placeholder encoder keys, as the real file holds an encoder), the prompt context as a tensor."""
    _check_version(model_version)
    cfg = preset if isinstance(preset, ModelPreset) else load_preset(preset)
    dtype = dtype or _DTYPES[_settings()["random"].get(cfg.name, "fp32")]
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    names = file_names()
    paths = {role: root / name for role, name in names.items()}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        safetensors.torch.save_file(_contiguous(WanDiT(cfg.dit).state_dict(), dtype), str(paths["dit"]))
        lq = LQ_PROJ_CLASSES[model_version](cfg.lq_proj)
        torch.save(_contiguous(lq.state_dict(), dtype), paths["lq_proj"])
        torch.save(_contiguous(TCDecoder(cfg.tcdecoder).state_dict(), dtype), paths["tcdecoder"])
        vae = _contiguous(WanVAEDecoder(cfg.vae_decoder).state_dict(), dtype)
        z2 = 2 * cfg.vae_decoder.z_dim
        vae.update({"conv1.weight": torch.randn(z2, z2, 1, 1, 1).to(dtype), "conv1.bias": torch.zeros(z2).to(dtype)})
        torch.save(vae, paths["vae"])
        torch.save(torch.randn(1, cfg.dit.text_len, cfg.dit.text_dim).to(dtype), paths["prompt"])
    finally:
        torch.random.set_rng_state(generator_state)
    log.info("random checkpoints written dir=%s preset=%s version=%s seed=%d", root, cfg.name, model_version, seed)
    return _files(paths, model_version, cfg.name, f"random:{cfg.name}")


def ensure_random_checkpoints(preset: str, model_version: str) -> WeightFiles:
    """Random checkpoints of ``preset`` in :func:`cache_dir`, written (atomically) on first use."""
    root = cache_dir() / f"random-{preset}-{model_version}"
    names = file_names()
    label = "random" if preset == REAL_PRESET else "random-small"
    if not all((root / name).is_file() for name in names.values()):
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
        try:
            write_random_checkpoints(staging, preset, model_version, seed=_settings()["random_seed"])
            shutil.rmtree(root, ignore_errors=True)  # an incomplete earlier attempt
            try:
                os.replace(staging, root)
            except OSError:
                if not root.is_dir():  # another process won the race otherwise
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    paths = {role: root / name for role, name in names.items()}
    return _files(paths, model_version, preset, label)
