"""The in-repo golden vectors are complete and unchanged (checksums recorded in PROVENANCE.md)."""
import hashlib
import re


def _recorded_checksums(golden_dir):
    text = (golden_dir / "PROVENANCE.md").read_text()
    return dict((name, digest) for digest, name in re.findall(r"(?m)^([0-9a-f]{64})  (\S+)$", text))


def test_every_golden_file_is_present_and_matches_its_checksum(golden_dir):
    recorded = _recorded_checksums(golden_dir)
    assert {"dust3r/weights.safetensors", "dust3r/ckpt_style.pth", "dino_vit/io.safetensors"} <= set(recorded)
    on_disk = {p.relative_to(golden_dir).as_posix() for p in golden_dir.rglob("*") if p.is_file()}
    assert on_disk - {"PROVENANCE.md"} == set(recorded), "golden files differ from PROVENANCE.md's list"
    for name, digest in recorded.items():
        assert hashlib.sha256((golden_dir / name).read_bytes()).hexdigest() == digest, name
