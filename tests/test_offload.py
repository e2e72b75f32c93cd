"""Group offloading of stage III's FLUX transformer and ControlNet (inpaint.offload): diffusers' hooks are
installed on every block, the start frames are bit-identical to those without offloading (with and without
float8 storage), the groups the simulator accounts are diffusers' groups, and the key is validated."""
from unittest import mock

import pytest
import torch
from diffusers.hooks.group_offloading import ModuleGroup

from reangle.config import CHOICES, ConfigError, load_config
from reangle.models.offload import GROUP_HOOK, OFFLOAD_MODES, check_offload, is_offloaded, offload_groups


def group_hooks(model):
    """diffusers' group offloading hooks on ``model``, by module."""
    return {m: m._diffusers_hook.get_hook(GROUP_HOOK) for m in model.modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(GROUP_HOOK) is not None}


def stage3_images(cfg, prompt, image, visible):
    from reangle.inpaint.multiview import InpaintSettings, ViewInput, inpaint_views
    from reangle.inpaint.run import load_models

    inpainter, met3r = load_models(cfg, torch.device("cpu"), [prompt])
    views = [ViewInput("a", image, visible, prompt), ViewInput("b", image.flip(-1), visible.flip(-1), prompt)]
    outputs = inpaint_views(inpainter, met3r, views, InpaintSettings(steps=2, candidates=2, size=64), progress=False)
    return inpainter, torch.stack([o.image for o in outputs])


@pytest.mark.parametrize("storage", ["null", "fp8"])
def test_stage3_with_group_offload_is_bit_identical_to_without(tiny_model_dir, storage):
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    overrides = [f"run.cache_dir={tiny_model_dir.parent.parent}", "data.height=64", "data.width=96",
                 f"inpaint.storage_dtype={storage}"]
    prompt = "a colour ramp"
    g = torch.Generator().manual_seed(5)
    image, visible = torch.rand(3, 64, 64, generator=g), torch.ones(64, 64)
    visible[:, :20] = 0
    runs, onloads = {}, {}
    for offload in ("null", "group"):
        cfg = load_config(["configs/presets/tiny.yaml"], [*overrides, f"inpaint.offload={offload}"])
        with mock.patch.object(ModuleGroup, "onload_", autospec=True, side_effect=ModuleGroup.onload_) as onload:
            runs[offload] = stage3_images(cfg, prompt, image, visible)
        onloads[offload] = onload.call_count
    (plain, reference), (offloaded, images) = runs["null"], runs["group"]
    for net in (offloaded.pipe.transformer, offloaded.controlnet):
        hooks = group_hooks(net)
        blocks, _ = offload_groups(net)
        assert _is_group_offload_enabled(net) and is_offloaded(net)
        assert set(blocks) <= set(hooks) and net in hooks  # every block, and the rest's group on the model
        assert all(h.group.onload_device == torch.device("cpu") and h.group.stream is None for h in hooks.values())
    assert onloads["null"] == 0 and onloads["group"] > 0  # the hooks ran (on the CPU they move nothing)
    assert not is_offloaded(plain.pipe.transformer) and not is_offloaded(offloaded.pipe.vae)
    if storage == "fp8":  # stored weights stay float8 through the offloaded run
        assert any(p.dtype == torch.float8_e4m3fn for p in offloaded.pipe.transformer.parameters())
    assert torch.isfinite(images).all() and torch.equal(images, reference)


def test_offload_groups_and_the_simulators_accounting_follow_diffusers_groups(tiny_model_dir):
    import importlib.util
    from pathlib import Path

    from reangle.inpaint.run import load_models

    path = Path(__file__).parents[1] / "benchmarks" / "full_size.py"
    spec = importlib.util.spec_from_file_location("full_size", path)
    full_size = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(full_size)
    cfg = load_config(["configs/presets/tiny.yaml"], [f"run.cache_dir={tiny_model_dir.parent.parent}",
                                                      "inpaint.offload=group"])
    inpainter, _ = load_models(cfg, torch.device("cpu"), ["a prompt"])
    nets = (inpainter.pipe.transformer, inpainter.controlnet)
    running = []
    for net in nets:
        groups = {id(h.group): h.group for h in group_hooks(net).values()}.values()
        blocks, rest = offload_groups(net)
        ours = [{id(t) for t in (*b.parameters(), *b.buffers())} for b in blocks]
        ours.append({id(t) for t in rest})
        theirs = {g.offload_leader is net: [] for g in groups}
        for g in groups:  # the group led by the model itself stays on the device through its forward
            tensors = {t for m in g.modules for t in (*m.parameters(), *m.buffers())} | {*g.parameters, *g.buffers}
            theirs[g.offload_leader is net].append(tensors)
        assert len(blocks) >= 2 and sorted(map(sorted, ours)) == sorted(
            sorted(id(t) for t in ts) for ts in (*theirs[False], *theirs[True]))
        nbytes = [sum(t.nbytes for t in ts) for ts in theirs[False]]
        running.append(sum(t.nbytes for t in theirs[True][0]) + 2 * max(nbytes))  # the running + prefetched block
    held = sum(t.nbytes for net in nets for t in net.parameters())
    assert full_size.group_offload_bytes(*nets) == (held, max(running))


def test_offload_key_takes_null_or_group_only():
    assert CHOICES["inpaint.offload"] == (None, *OFFLOAD_MODES)
    assert load_config(["configs/presets/tiny.yaml"], ["inpaint.offload=group"]).inpaint.offload == "group"
    assert load_config(["configs/presets/tiny.yaml"]).inpaint.offload is None
    with pytest.raises(ConfigError, match=r"inpaint\.offload.*null, group"):
        load_config(["configs/presets/tiny.yaml"], ["inpaint.offload=leaf"])
    with pytest.raises(ValueError, match="offload mode"):
        check_offload("leaf", "offload mode")


@pytest.mark.parametrize("preset,offload", [("24gb", "group"), ("48gb", None), ("80gb", None)])
def test_only_the_24gb_preset_offloads_stage3(preset, offload):
    assert load_config(["configs/presets/tiny.yaml", f"configs/gpu/{preset}.yaml"]).inpaint.offload == offload
