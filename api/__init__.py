"""The REST API over both models (`make serve`; `python -m api.serve --help`).

serve.py     the command line: checkpoints, address, batching limits; starts uvicorn
app.py       FastAPI routes, request shapes, JSON errors, the API key and the upload limit
batching.py  merges concurrent image requests into one sampling batch, in a worker thread
models.py    the loaded checkpoints: what they are, what they scored, and the call into each package
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for folder in ("image_gen", "audio_gen"):  # each model's package lives in its folder, as the scripts run it
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))
