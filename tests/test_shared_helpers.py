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


def test_the_tensorboard_board_writes_every_number_a_picture_and_a_sound(tmp_path):
    """Board.record flattens nested records into 'a/b' scalars and skips what is not a number; the event file
    then holds them, the image and the audio, as TensorBoard reads it."""
    import torch
    from audiogen.common import Board
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = Board(tmp_path)
    board.record({"epoch": 1, "loss": 0.5, "valid": {"mse": 0.25, "name": "x", "pesq": None}, "flag": True}, 1)
    board.record({"epoch": 2, "loss": 0.25, "valid": {"mse": 0.125}}, 2)
    board.image("samples", torch.rand(3, 8, 8), 2)
    board.audio("clip", torch.sin(torch.arange(1600) / 5.0), 2, 16_000)
    board.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0, "audio": 0}).Reload()
    assert sorted(events.Tags()["scalars"]) == ["epoch", "loss", "valid/mse"]
    assert [(e.step, e.value) for e in events.Scalars("valid/mse")] == [(1, 0.25), (2, 0.125)]
    assert events.Tags()["images"] == ["samples"] and events.Tags()["audio"] == ["clip"]
    assert Board(tmp_path / "off", enabled=False).writer is None and not (tmp_path / "off").exists()
