"""Checkpoint resolving, strict loading of each official file format, random checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from upscaler.models.lq_proj import BufferLQProj, CausalLQProj
from upscaler.models.tcdecoder import TCDecoder
from upscaler.models.wan_vae import WanVAEDecoder
from upscaler.weights import (
    CheckpointError,
    WeightsError,
    load_models,
    read_state,
    resolve_weights,
    write_random_checkpoints,
)


def _copy(files, tmp_path: Path):
    root = tmp_path / "weights"
    shutil.copytree(files.dit.parent, root)
    return resolve_weights(root, files.model_version, "all", preset="small")


def _assert_loaded(module, path: Path, ignore_prefixes: tuple[str, ...] = ()):
    state = read_state(path)
    loaded = module.state_dict()
    file_keys = {k for k in state if not k.startswith(ignore_prefixes)}
    assert set(loaded) == file_keys
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key].to(value.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("version, lq_class", [("v1", BufferLQProj), ("v1.1", CausalLQProj)])
def test_round_trip_of_every_file(small_checkpoints, version, lq_class):
    files = resolve_weights(small_checkpoints(version).dit.parent, version, "all", preset="small")
    tiny = load_models(files, device="cpu", dtype=torch.float32, variant="tiny")
    full = load_models(files, device="cpu", dtype=torch.float32, variant="full")
    assert isinstance(tiny.lq_proj, lq_class) and isinstance(tiny.decoder, TCDecoder)
    assert isinstance(full.decoder, WanVAEDecoder)
    _assert_loaded(tiny.dit, files.dit)
    _assert_loaded(tiny.lq_proj, files.lq_proj)
    _assert_loaded(tiny.decoder, files.tcdecoder)
    _assert_loaded(full.decoder, files.vae, ignore_prefixes=("encoder.", "conv1."))
    assert files.dit.read_bytes()[:8]  # safetensors header
    torch.testing.assert_close(tiny.context, torch.load(files.prompt, weights_only=True))


def _rewrite_pickle(path: Path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def test_missing_key_names_file_and_key(small_checkpoints, tmp_path):
    files = _copy(small_checkpoints(), tmp_path)
    state = safetensors.torch.load_file(str(files.dit))
    del state["blocks.1.cross_attn.norm_k.weight"]
    safetensors.torch.save_file(state, str(files.dit))
    with pytest.raises(CheckpointError, match="missing key") as err:
        load_models(files, variant="tiny")
    assert err.value.key == "blocks.1.cross_attn.norm_k.weight"
    assert files.dit.name in str(err.value) and err.value.key in str(err.value)


def test_unexpected_key_names_file_and_key(small_checkpoints, tmp_path):
    files = _copy(small_checkpoints(), tmp_path)
    _rewrite_pickle(files.lq_proj, lambda s: s.__setitem__("conv3.weight", torch.zeros(1)))
    with pytest.raises(CheckpointError, match="unexpected key") as err:
        load_models(files, variant="tiny")
    assert err.value.key == "conv3.weight" and files.lq_proj.name in str(err.value)


def test_wrong_shape_names_file_and_key(small_checkpoints, tmp_path):
    files = _copy(small_checkpoints(), tmp_path)
    _rewrite_pickle(files.tcdecoder, lambda s: s.__setitem__("decoder.1.bias", torch.zeros(5)))
    with pytest.raises(CheckpointError, match="shape") as err:
        load_models(files, variant="tiny")
    assert err.value.key == "decoder.1.bias" and files.tcdecoder.name in str(err.value)


def test_vae_encoder_keys_are_ignored_but_unknown_keys_are_errors(small_checkpoints, tmp_path):
    files = _copy(small_checkpoints(), tmp_path)
    _rewrite_pickle(files.vae, lambda s: s.__setitem__("encoder.conv1.weight", torch.zeros(3)))
    assert isinstance(load_models(files, variant="full").decoder, WanVAEDecoder)
    _rewrite_pickle(files.vae, lambda s: s.__setitem__("quant.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match="unexpected key") as err:
        load_models(files, variant="full")
    assert err.value.key == "quant.weight" and files.vae.name in str(err.value)


def test_prompt_context_shape_is_checked(small_checkpoints, tmp_path):
    files = _copy(small_checkpoints(), tmp_path)
    torch.save(torch.zeros(1, 4, 7), files.prompt)
    with pytest.raises(CheckpointError, match="posi_prompt.pth"):
        load_models(files, variant="tiny")


def test_lq_layer_count_comes_from_the_checkpoint(small_checkpoints, tmp_path):
    files = _copy(small_checkpoints(), tmp_path)

    def add_layer(state):
        state["linear_layers.1.weight"] = state["linear_layers.0.weight"] * 2
        state["linear_layers.1.bias"] = state["linear_layers.0.bias"]

    _rewrite_pickle(files.lq_proj, add_layer)
    models = load_models(files, variant="tiny")
    assert len(models.lq_proj.linear_layers) == 2


def test_local_dir_lacking_files_is_a_clear_error(small_checkpoints, tmp_path):
    files = _copy(small_checkpoints(), tmp_path)
    files.tcdecoder.unlink()
    resolve_weights(files.dit.parent, "v1.1", "full", preset="small")  # full does not need it
    with pytest.raises(WeightsError, match="TCDecoder.ckpt"):
        resolve_weights(files.dit.parent, "v1.1", "tiny", preset="small")


def test_offline_without_weights_names_repo_files_and_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("FLASHVSR_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(WeightsError) as err:
        resolve_weights("auto", "v1.1", "tiny", offline=True)
    message = str(err.value)
    for part in ("JunhaoZhuang/FlashVSR-v1.1", "diffusion_pytorch_model_streaming_dmd.safetensors",
                 "LQ_proj_in.ckpt", "TCDecoder.ckpt", str(tmp_path / "hub")):
        assert part in message
    assert "Wan2.1_VAE.pth" not in message  # the tiny variant does not need the VAE


def test_random_small_is_written_once_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHVSR_CACHE_DIR", str(tmp_path))
    files = resolve_weights("random-small", "v1", "tiny")
    assert files.preset == "small" and files.label == "random-small"
    assert files.dit.parent == tmp_path / "random-small-v1"
    stamp = files.dit.stat().st_mtime_ns
    again = resolve_weights("random-small", "v1", "tiny")
    assert again.dit.stat().st_mtime_ns == stamp
    assert isinstance(load_models(again, variant="tiny").lq_proj, BufferLQProj)


def test_write_random_checkpoints_is_seeded(tmp_path):
    a = write_random_checkpoints(tmp_path / "a", "small", "v1.1", seed=3)
    b = write_random_checkpoints(tmp_path / "b", "small", "v1.1", seed=3)
    assert a.dit.read_bytes() == b.dit.read_bytes()
    assert a.lq_proj.stat().st_size == b.lq_proj.stat().st_size
