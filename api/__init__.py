"""The REST API over both models (`make serve`; `python -m api.serve --help`).

serve.py     the command line: checkpoints, address, batching limits; starts uvicorn
app.py       FastAPI routes, request shapes, JSON errors, the API key and the upload limit
batching.py  merges concurrent image requests into one sampling batch, in a worker thread
models.py    the loaded checkpoints: what they are, what they scored, and the call into each package
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: the scripts' default checkpoints live under it
