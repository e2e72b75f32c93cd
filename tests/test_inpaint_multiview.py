"""Stage III over several views with tiny FLUX and tiny MEt3R: order, costs, sizes, paste-back, errors."""
import pytest
import torch

from reangle.consistency import load_met3r
from reangle.inpaint.inpainter import FluxControlNetInpainter
from reangle.inpaint.multiview import InpaintSettings, ViewInput, inpaint_views
from reangle.models.flux import load_flux

SIZE = 64
TINY_DUST3R = dict(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32, dec_depth=1, dec_num_heads=2,
                   head_type="linear", img_size=(SIZE, SIZE))
TINY_FEATUP = {"dino": {"embed_dim": 32, "depth": 1, "num_heads": 2}, "key_dim": 8}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    flux = load_flux("tiny", "tiny", cache_dir=tmp_path_factory.mktemp("cache"), dtype=torch.float32)
    met3r = load_met3r(point_source=TINY_DUST3R, featup_source=TINY_FEATUP, img_size=SIZE, radius=0.04)
    return FluxControlNetInpainter(flux, max_batch=4, max_sequence_length=32), met3r


def _views(count=3, height=48, width=72):
    g = torch.Generator().manual_seed(1)
    views = []
    for i in range(count):
        visible = torch.ones(height, width)
        visible[:, : width // (i + 2)] = 0
        views.append(ViewInput(f"view_{i}", torch.rand((3, height, width), generator=g), visible, "a red ball"))
    return views


def test_views_are_searched_in_order_with_the_stated_cost(models):
    inpainter, met3r = models
    settings = InpaintSettings(steps=3, candidates=2, size=SIZE, seed=0)
    out = inpaint_views(inpainter, met3r, _views(), settings, progress=False)
    assert [o.name for o in out] == ["view_0", "view_1", "view_2"]
    assert out[0].searched_with == out[1].searched_with == ["view_0", "view_1"]
    assert out[2].searched_with == ["view_2"]
    per_view = 1 + 2 * (3 - 1)
    assert out[0].model_calls == 2 * per_view and out[2].model_calls == per_view
    for o in out:
        assert o.image.shape == (3, 48, 72) and 0 <= o.image.min() and o.image.max() <= 1
        assert len(o.scores) == 2
    # the pair scored each other; the third view scored against both finished views
    assert all(s == s for s in out[0].scores + out[2].scores)


def test_same_seed_same_images_and_paste_back_keeps_visible_pixels(models):
    inpainter, met3r = models
    views = _views(2)
    settings = InpaintSettings(steps=2, candidates=2, size=SIZE, seed=3)
    first = inpaint_views(inpainter, met3r, views, settings, progress=False)
    again = inpaint_views(inpainter, met3r, views, settings, progress=False)
    for a, b in zip(first, again):
        assert torch.equal(a.image, b.image)
    pasted = inpaint_views(inpainter, met3r, views, InpaintSettings(steps=2, candidates=2, size=SIZE, seed=3,
                                                                    paste_back=True), progress=False)
    for view, a, p in zip(views, first, pasted):
        keep = view.visible.bool()
        assert torch.equal(p.image[:, keep], view.image[:, keep])
        assert torch.equal(p.image[:, ~keep], a.image[:, ~keep])


def test_without_guidance_each_view_is_inpainted_independently(models):
    inpainter, met3r = models
    views = _views(3)
    settings = InpaintSettings(steps=3, candidates=4, guidance=False, size=SIZE, seed=0)
    out = inpaint_views(inpainter, met3r, views, settings, progress=False)
    assert out[2].model_calls == 3  # one call per step
    assert all(s != s for o in out for s in o.scores)  # NaN: nothing was scored


def test_bad_views_are_one_clear_error(models):
    inpainter, met3r = models
    views = _views(2)
    views[1].visible = torch.ones(10, 10)
    with pytest.raises(ValueError, match="does not match the image"):
        inpaint_views(inpainter, met3r, views, InpaintSettings(size=SIZE), progress=False)
    with pytest.raises(ValueError, match="multiple of 16"):
        inpaint_views(inpainter, met3r, _views(2), InpaintSettings(size=72), progress=False)


def test_consistency_table_is_the_mean_over_each_tuples_pairs(models):
    from reangle.inpaint.reward import consistency_terms, term_labels
    from reangle.inpaint.search import mean_of_terms

    def consistency_table(*args, **kwargs):
        return mean_of_terms(consistency_terms(*args, **kwargs))[0]

    _, met3r = models
    g = torch.Generator().manual_seed(2)
    a, b, refs = (torch.rand((n, 3, SIZE, SIZE), generator=g) * 2 - 1 for n in (2, 3, 2))
    assert term_labels(["a", "b"], ["r0", "r1"]) == [("a", "r0"), ("a", "r1"), ("a", "b"), ("b", "r0"), ("b", "r1")]
    with torch.no_grad():
        assert consistency_terms(met3r, [a, b], refs, min_overlap=0.0).shape == (2, 3, 5)
        table = consistency_table(met3r, [a, b], refs, min_overlap=0.0)

        def m(x, y):
            return float(met3r(torch.stack([x, y])[None]))

        a_refs = [sum(m(x, r) for r in refs) for x in a]
        b_refs = [sum(m(y, r) for r in refs) for y in b]
        for i in range(2):
            for j in range(3):
                expected = (a_refs[i] + b_refs[j] + m(a[i], b[j])) / 5
                assert float(table[i, j]) == pytest.approx(expected, abs=1e-5)
        assert torch.isinf(consistency_table(met3r, [a], refs, min_overlap=1.01)).all()
        with pytest.raises(ValueError, match="nothing to score"):
            consistency_terms(met3r, [a], None, min_overlap=0.0)


def test_a_lone_view_is_scored_against_the_input_frame_only_when_asked(models):
    inpainter, met3r = models
    view = _views(1)
    frame = torch.rand((3, 48, 72), generator=torch.Generator().manual_seed(8))
    settings = dict(steps=3, candidates=2, size=SIZE, seed=0)
    plain = inpaint_views(inpainter, met3r, view, InpaintSettings(**settings), input_frame=frame, progress=False)
    assert all(s != s for s in plain[0].scores) and plain[0].model_calls == 3  # nothing to score: unguided
    ref = inpaint_views(inpainter, met3r, view, InpaintSettings(**settings, use_input_frame=True), input_frame=frame,
                        progress=False)
    assert len(ref[0].scores) == 2 and all(s == s for s in ref[0].scores) and ref[0].model_calls == 5


def test_views_no_candidate_overlaps_are_recorded_by_name_in_scores_json(models, tmp_path):
    """min_overlap above 1: no pair passes the guard, so every partner is left out and no score is valid."""
    import json

    from reangle.inpaint.run import SCORES_FILE, write_outputs

    inpainter, met3r = models
    settings = InpaintSettings(steps=3, candidates=2, size=SIZE, seed=0, min_overlap=1.01, use_input_frame=True)
    frame = torch.rand((3, 48, 72), generator=torch.Generator().manual_seed(8))
    out = inpaint_views(inpainter, met3r, _views(3), settings, input_frame=frame, progress=False)
    assert [o.left_out for o in out] == [[["input", "view_1"]] * 2, [["input", "view_0"]] * 2,
                                         [["input", "view_0", "view_1"]] * 2]
    write_outputs(tmp_path, out, {"settings": vars(settings)})
    record = json.loads((tmp_path / "start_frames" / SCORES_FILE).read_text())
    assert record["views"]["view_2"]["left_out"] == [["input", "view_0", "view_1"]] * 2
    assert record["views"]["view_2"]["scores"] == [None, None]       # inf is null, not 3.4e38


def test_met3r_inputs_of_many_candidates_are_computed_a_chunk_at_a_time_with_the_same_values(models, monkeypatch):
    from reangle.inpaint.reward import ImageInputs

    _, met3r = models
    images = torch.rand((5, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(2)) * 2 - 1
    whole = ImageInputs.of(met3r, images)  # max_pairs_per_chunk 8: one call
    calls = []
    features = met3r.image_features
    monkeypatch.setattr(met3r, "image_features", lambda x: calls.append(len(x)) or features(x))
    monkeypatch.setattr(met3r, "max_pairs_per_chunk", 1)
    chunked = ImageInputs.of(met3r, images)
    assert calls == [2, 2, 1]  # the images of one pair at a time
    for a, b in zip(whole, chunked):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
