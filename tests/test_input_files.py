"""Frame folders and ``.npy`` depth folders read as the user meant: natural order, 16-bit PNGs,
depth of the video's aspect cropped like the frames."""
import cv2
import numpy as np
import pytest
import torch

from reangle.geometry.depth import DepthError, NpyDepth
from reangle.io.video import VideoError, count_frames, read_video
from reangle.utils import natural_key


def write_indexed_frames(folder, names, size=(12, 16)):
    """One PNG per name whose grey level encodes its position in ``names`` (10 levels apart)."""
    folder.mkdir()
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.full((*size, 3), 10 * i, np.uint8))


def levels(frames):
    return (frames[:, 0, 0, 0] * 255).round().long().tolist()


def test_frame_folder_reads_numbers_as_numbers(tmp_path):
    names = [f"frame{i}.png" for i in range(20)]
    write_indexed_frames(tmp_path / "f", reversed(names[::-1]))   # creation order is not the order
    frames = read_video(tmp_path / "f", num_frames=20, height=12, width=16)
    assert levels(frames) == [10 * i for i in range(20)]


def test_frame_folder_with_mixed_padding_and_prefixes(tmp_path):
    names = ["shot_a_frame2.jpg", "shot_a_frame10.jpg", "shot_b_frame1.jpg"]   # order of natural keys
    write_indexed_frames(tmp_path / "f", names)
    frames = read_video(tmp_path / "f", num_frames=3, height=12, width=16)
    assert [round(v / 10) for v in levels(frames)] == [0, 1, 2]
    assert natural_key("IMG_9") < natural_key("img_10") < natural_key("IMG_010a")


@pytest.mark.parametrize("names", [["frame1.png", "frame01.png", "frame2.png"], ["a0.png", "a0.jpg"]])
def test_ambiguous_frame_names_are_refused(tmp_path, names):
    write_indexed_frames(tmp_path / "f", names)
    with pytest.raises(VideoError, match="ambiguous"):
        count_frames(tmp_path / "f")


def test_sixteen_bit_grey_png_frames_are_scaled_to_eight_bits(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    grey = (np.arange(40 * 64).reshape(40, 64) * 25).astype(np.uint16)      # 0 .. 63975
    cv2.imwrite(str(folder / "frame0.png"), grey)
    frame = read_video(folder, num_frames=1, height=40, width=64)[0]
    expected = torch.from_numpy(np.round(grey / 257.0)).float() / 255
    for channel in frame:
        torch.testing.assert_close(channel, expected, atol=1e-6, rtol=0)
    assert (frame == 1).float().mean() < 0.01     # not clipped to white


@pytest.mark.parametrize("alpha", [False, True])
def test_sixteen_bit_colour_png_frames_are_rounded_to_eight_bits(tmp_path, alpha):
    folder = tmp_path / "f"
    folder.mkdir()
    rgb = np.stack([*np.meshgrid(np.arange(64) * 1000, np.arange(40) * 1600, indexing="xy"), np.full((40, 64), 30000)],
                   axis=-1).astype(np.uint16)
    bgr = rgb[..., ::-1]                                                     # OpenCV writes BGR(A)
    if alpha:
        bgr = np.concatenate([bgr, np.full((40, 64, 1), 1000, np.uint16)], axis=-1)
    cv2.imwrite(str(folder / "frame0.png"), bgr)
    frame = read_video(folder, num_frames=1, height=40, width=64)[0]
    expected = torch.from_numpy(np.round(rgb / 257.0) / 255).permute(2, 0, 1).float()
    torch.testing.assert_close(frame, expected, atol=1e-6, rtol=0)


def write_depth_folder(folder, maps, names):
    folder.mkdir()
    for m, name in zip(maps, names):
        np.save(folder / name, m.astype(np.float32))


@pytest.mark.parametrize("suffix,mode", [(".png", "RGB"), (".png", "L"), (".png", "P"), (".png", "LA"),
                                        (".png", "RGBA"), (".tif", "RGB"), (".jpg", "RGB"), (".bmp", "RGB")])
def test_eight_bit_frames_read_the_same_as_pillow_reads_them(tmp_path, suffix, mode):
    from PIL import Image

    folder = tmp_path / "f"
    folder.mkdir()
    rgb = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).convert(mode).save(folder / f"frame0{suffix}")
    expected = np.array(Image.open(folder / f"frame0{suffix}").convert("RGB"))
    frame = read_video(folder, num_frames=1, height=24, width=32)[0]
    torch.testing.assert_close(frame, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)


def test_npy_depth_folder_reads_numbers_as_numbers(tmp_path):
    names = [f"depth{i}.npy" for i in range(12)]
    write_depth_folder(tmp_path / "d", [np.full((4, 6), 1.0 + i) for i in range(12)], names)
    depth = NpyDepth(str(tmp_path / "d"), output="depth", clip=(1e-4, 1e4))(torch.zeros(12, 3, 4, 6))
    assert depth[:, 0, 0].tolist() == [1.0 + i for i in range(12)]


def test_ambiguous_npy_depth_names_are_refused(tmp_path):
    write_depth_folder(tmp_path / "d", [np.ones((4, 6))] * 2, ["d7.npy", "d007.npy"])
    with pytest.raises(DepthError, match="ambiguous"):
        NpyDepth(str(tmp_path / "d"), output="depth")(torch.zeros(1, 3, 4, 6))


def test_npy_depth_of_the_video_aspect_is_cropped_like_the_frames(tmp_path):
    """A 60 x 120 video read at 48 x 64 is resized to 48 x 96 and cropped 16 px on each side; its
    depth, saved at half resolution (30 x 60), must land on the same pixels as the frames."""
    frame, marker_y, marker_x = np.zeros((60, 120, 3), np.uint8), 30, 40
    frame[marker_y - 2:marker_y + 2, marker_x - 2:marker_x + 2] = 255
    (tmp_path / "f").mkdir()
    cv2.imwrite(str(tmp_path / "f" / "frame0.png"), frame)
    frames = read_video(tmp_path / "f", num_frames=1, height=48, width=64)
    depth_map = np.full((30, 60), 50.0)
    depth_map[marker_y // 2 - 1:marker_y // 2 + 1, marker_x // 2 - 1:marker_x // 2 + 1] = 2.0
    write_depth_folder(tmp_path / "d", [depth_map], ["frame0.npy"])
    depth = NpyDepth(str(tmp_path / "d"), output="depth", clip=(1e-4, 1e4))(frames)
    near = (depth[0] < 10).nonzero().float().mean(0)
    bright = (frames[0, 0] > 0.5).nonzero().float().mean(0)
    assert (near - bright).abs().max() <= 1.0, (near, bright)
