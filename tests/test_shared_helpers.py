"""The two packages are self-contained by design, so their common helpers exist twice: the whole files must
stay identical, so that a helper added or changed in one shows up here at once."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_common_modules_are_identical():
    image = (ROOT / "image_gen" / "imagegen" / "common.py").read_text()
    audio = (ROOT / "audio_gen" / "audiogen" / "common.py").read_text()
    assert image == audio, "image_gen/imagegen/common.py and audio_gen/audiogen/common.py differ: copy one onto the other"


def test_neither_model_imports_the_other():
    for folder, other in (("image_gen", "audiogen"), ("audio_gen", "imagegen")):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert f"import {other}" not in text and f"from {other}" not in text, f"{path} imports {other}"
