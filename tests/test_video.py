"""Video input/output: formats, frame sampling, resizing, short videos and bad files."""
import numpy as np
import pytest
import torch
from PIL import Image

from reangle.io.video import VideoError, frame_indices, read_video, resize_center_crop, write_gif, write_mp4


def gradient_video(n=6, h=64, w=96):
    """Frames whose brightness encodes the frame index (robust to lossy codecs)."""
    frames = torch.linspace(0.1, 0.9, n).view(n, 1, 1, 1).expand(n, 3, h, w).clone()
    frames[:, 0] *= torch.linspace(0.5, 1.0, w)
    return frames


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_written_video_reads_back(tmp_path, suffix):
    frames = gradient_video()
    path = tmp_path / f"clip{suffix}"
    (write_mp4 if suffix == ".mp4" else write_gif)(frames, path)
    back = read_video(path, num_frames=6, height=64, width=96)
    assert back.shape == (6, 3, 64, 96) and back.dtype == torch.float32
    assert (back - frames).abs().mean() < 0.03


def test_frame_folder_with_resize_and_center_crop(tmp_path):
    for i in range(5):
        image = np.zeros((40, 100, 3), np.uint8)
        image[:, 30:70] = 50 * i  # the centre band survives the crop
        Image.fromarray(image).save(tmp_path / f"{i:03d}.png")
    back = read_video(tmp_path, num_frames=3, height=20, width=20, start=0, stride=2)
    assert back.shape == (3, 3, 20, 20)
    assert torch.allclose(back[:, 0, 10, 10], torch.tensor([0.0, 100.0, 200.0]) / 255, atol=2 / 255)


def test_resize_center_crop_keeps_the_aspect():
    frames = torch.zeros(1, 3, 100, 300)
    frames[..., 100:200] = 1.0  # middle third
    out = resize_center_crop(frames, 50, 50)
    assert out.shape == (1, 3, 50, 50) and out.mean() > 0.99


def test_frame_sampling_and_short_video_strategies():
    assert frame_indices(10, 4, start=2, stride=2) == [2, 4, 6, 8]
    assert frame_indices(5, 7, short_video="loop") == [0, 1, 2, 3, 4, 0, 1]
    assert frame_indices(5, 7, short_video="pad") == [0, 1, 2, 3, 4, 4, 4]
    with pytest.raises(VideoError, match="has 5 frames but 7 frames"):
        frame_indices(5, 7)
    with pytest.raises(VideoError, match="unknown short_video"):
        frame_indices(5, 3, short_video="stretch")


def test_too_few_frames_is_a_clear_error(tmp_path):
    write_mp4(gradient_video(n=4), tmp_path / "short.mp4")
    with pytest.raises(VideoError, match="has 4 frames but 49"):
        read_video(tmp_path / "short.mp4", num_frames=49, height=64, width=96)
    padded = read_video(tmp_path / "short.mp4", num_frames=6, height=64, width=96, short_video="pad")
    assert torch.allclose(padded[4], padded[5])


def test_missing_unreadable_and_unsupported_files(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video")
    with pytest.raises(VideoError, match="cannot read video"):
        read_video(tmp_path / "broken.mp4")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(VideoError, match="unsupported video format"):
        read_video(tmp_path / "notes.txt")


def test_tile_videos_lays_out_rows_and_shrinks_tiles():
    from reangle.io.grid import tile_videos
    videos = [torch.full((2, 3, 8, 12), value) for value in (0.2, 0.5, 0.8)]
    grid = tile_videos(videos)
    assert grid.shape == (2, 3, 16, 24)
    assert grid[0, 0, 0, 0] == 0.2 and grid[0, 0, 0, 12] == 0.5 and grid[0, 0, 8, 0] == 0.8
    assert grid[:, :, 8:, 12:].abs().max() == 0  # the empty cell is black
    small = tile_videos(videos, max_width=12)
    assert small.shape == (2, 3, 8, 12) and torch.allclose(small[0, 0, 0, 0], torch.tensor(0.2))


def test_tile_labels_name_each_tile_and_leave_the_rest_unchanged():
    from reangle.io.grid import label_ink, tile_videos
    videos = [torch.full((2, 3, 40, 120), value) for value in (0.2, 0.5, 0.8)]
    names = ["input", "orbit_left_00", "dolly_in_01"]
    plain, labelled = tile_videos(videos), tile_videos(videos, labels=names)
    assert labelled.shape == plain.shape == (2, 3, 80, 240)
    for i, name in enumerate(names):
        r, c = divmod(i, 2)
        tile, ref = labelled[..., r * 40:(r + 1) * 40, c * 120:(c + 1) * 120], videos[i]
        ink = label_ink(name, 120)
        h, w = ink.shape
        assert 8 <= h <= 20 and w > 4 * len(name)  # one small line of text, as wide as its letters
        corner = tile[..., :h, :w]
        assert (corner - ref[..., :h, :w]).abs().amax() > 0.1
        assert torch.equal(corner[0], corner[1])  # the same label on every frame
        assert corner.amax() > 0.95 and corner.amin() < ref.amin() - 0.1  # white text on a dark box
        outside = torch.ones(40, 120, dtype=torch.bool)
        outside[:h, :w] = False
        assert torch.equal(tile[..., outside], ref[..., outside])
    different = tile_videos(videos, labels=["a", "b", "c"])
    assert not torch.equal(different[..., :20, :60], labelled[..., :20, :60])  # the text itself is drawn
    with pytest.raises(ValueError, match="one label per video"):
        tile_videos(videos, labels=names[:2])


BITS = 8


def _coded_frames(n, h, w):
    """uint8 ``[n, h, w, 3]``: frame i shows i in binary as BITS vertical black/white bands."""
    edges = np.linspace(0, w, BITS + 1).round().astype(int)
    bits = (np.arange(n)[:, None] >> np.arange(BITS)) & 1  # [n, BITS]
    columns = np.repeat(bits, np.diff(edges), axis=1) * 255  # [n, w]
    return np.broadcast_to(columns[:, None, :, None], (n, h, w, 3)).astype(np.uint8)


def _frame_numbers(frames):
    """Read the binary code back from ``[N, 3, H, W]`` frames in [0, 1] (band centres only)."""
    w = frames.shape[-1]
    edges = np.linspace(0, w, BITS + 1).round().astype(int)
    bands = torch.stack([frames[..., a + 2:b - 2].mean(dim=(1, 2, 3)) for a, b in zip(edges[:-1], edges[1:])], 1)
    return ((bands > 0.5).long() << torch.arange(BITS)).sum(1).tolist()


def _encode(path, frames, *codec_args, raw_stream=None):
    """Encode uint8 frames with the ffmpeg of imageio-ffmpeg; with ``raw_stream`` (a suffix) encode an
    elementary stream first and copy it into ``path``'s container (packets without timestamps)."""
    import subprocess

    import imageio_ffmpeg
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    n, h, w, _ = frames.shape
    target = path.with_suffix(raw_stream) if raw_stream else path
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                    "-r", "25", "-i", "-", *codec_args, str(target)], input=frames.tobytes(), check=True)
    if raw_stream:
        subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-r", "25", "-i", str(target), "-c", "copy", str(path)],
                       check=True)


SPARSE_KEYFRAME_FILES = {
    "mjpeg_odd.avi": dict(size=(77, 131), codec=("-c:v", "mjpeg", "-q:v", "3")),
    "mpeg4_bframes_odd.avi": dict(size=(77, 131), codec=("-c:v", "mpeg4", "-g", "250", "-bf", "2", "-q:v", "4",
                                                         "-f", "m4v"), raw_stream=".m4v"),
    "h264_no_timestamps.avi": dict(size=(78, 132), codec=("-c:v", "libx264", "-g", "250", "-pix_fmt", "yuv420p",
                                                          "-f", "h264"), raw_stream=".h264"),
    "h264_long_gop.avi": dict(size=(78, 132), codec=("-c:v", "libx264", "-g", "250", "-pix_fmt", "yuv420p")),
    "h264_long_gop.mp4": dict(size=(78, 132), codec=("-c:v", "libx264", "-g", "250", "-pix_fmt", "yuv420p")),
}


@pytest.mark.parametrize("name", sorted(SPARSE_KEYFRAME_FILES))
def test_frames_from_the_middle_are_the_frames_asked_for(tmp_path, name):
    """Seeking in files with one keyframe and B-frames or no timestamps lands elsewhere; reading must not."""
    spec = SPARSE_KEYFRAME_FILES[name]
    h, w = spec["size"]
    path = tmp_path / name
    _encode(path, _coded_frames(150, h, w), *spec["codec"], raw_stream=spec.get("raw_stream"))
    frames = read_video(path, num_frames=16, height=h, width=w, start=70, stride=3)
    assert frames.shape == (16, 3, h, w)
    assert _frame_numbers(frames) == list(range(70, 118, 3))
    near_the_end = read_video(path, num_frames=4, height=h, width=w, start=140, stride=3)
    assert _frame_numbers(near_the_end) == [140, 143, 146, 149]


def test_narrow_video_is_read_through_ffmpeg(tmp_path):
    """decord cannot convert frames this narrow; the frame number is the grey level (6 per frame)."""
    path = tmp_path / "narrow.mp4"
    grey = np.arange(40, dtype=np.uint8)[:, None, None, None] * 6
    _encode(path, np.broadcast_to(grey, (40, 64, 16, 3)).copy(), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "250")
    frames = read_video(path, num_frames=5, height=64, width=16, start=20, stride=4)
    assert frames.shape == (5, 3, 64, 16)
    assert (frames.mean(dim=(1, 2, 3)) * 255 / 6).round().long().tolist() == [20, 24, 28, 32, 36]


def test_decord_leaves_the_png_readers_of_other_libraries_working(tmp_path):
    """decord loads its library with global symbols; loaded through import_decord, OpenCV still reads PNG
    files afterwards (in a fresh process: the order of loading is what matters)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import numpy as np
        from reangle.io.video import import_decord, write_mp4
        import torch
        decord = import_decord()
        import cv2
        cv2.imwrite({str(tmp_path / 'x.png')!r}, np.full((8, 8, 3), 7, np.uint16) * 1000)
        image = cv2.imread({str(tmp_path / 'x.png')!r}, cv2.IMREAD_UNCHANGED)
        write_mp4(torch.full((4, 3, 16, 16), 0.5), {str(tmp_path / 'v.mp4')!r}, fps=8)
        print(image.dtype, int(image.max()), len(decord.VideoReader({str(tmp_path / 'v.mp4')!r})))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["uint16", "7000", "4"]
