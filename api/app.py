"""The HTTP API (FastAPI): routes, request and response shapes, errors as JSON, the API key and the
upload limit. The images endpoint follows OpenAI's `POST /v1/images/generations`."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from imagegen.data import class_names
from imagegen.diffusion import SamplerSettings
from pydantic import BaseModel, ConfigDict, Field

from .batching import ImageBatcher, Job, QueueFull
from .models import BadRequest, UnusableAudio

log = logging.getLogger("imageaudiogen.api")


@dataclass(frozen=True)
class ServerOptions:
    """How the server batches and what it refuses. `max_batch`: images per sampling batch (None: the
    sampler's own batch size for the device, halved when guided); `max_wait_ms`: how long the oldest
    request waits for company; `max_queue`: image requests waiting before 503 (`max_audio_queue`: audio
    requests); `max_images`: n per request;
    `max_upload_mb`: the largest upload; `api_key`: the bearer token every request must carry (None: none)."""
    batching: bool = True
    max_batch: int | None = None
    max_wait_ms: float = 10.0
    max_queue: int = 32
    max_audio_queue: int = 4
    max_images: int = 16
    max_clips: int = 4
    max_upload_mb: float = 50.0
    api_key: str | None = None


class ApiError(HTTPException):
    """An error answered as {"error": {"message", "type", "param"}} with its status."""

    def __init__(self, status, message, kind="invalid_request_error", param=None, headers=None):
        super().__init__(status, message, headers)
        self.kind, self.param = kind, param


def error_body(message, kind, param=None):
    return {"error": {"message": message, "type": kind, "param": param}}


IMAGE_SIZE = "28x28"  # every image model here draws MNIST-sized images, width x height as OpenAI writes it


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="the image model's id (GET /v1/models); default: the loaded one")
    prompt: str | int = Field("random", description="a class: its index (7), its name ('ankle boot'), or "
                                                    "'random' for the model's unconditional samples (null class)")
    n: int = Field(1, ge=1, description="images to draw (at most the server's --max_images)")
    response_format: Literal["b64_json"] = Field("b64_json", description="PNGs as base64 strings (the only format)")
    guidance_scale: float | None = Field(None, ge=0, le=50, description="classifier-free guidance w; default: "
                                                                        "the checkpoint's own")
    sampler: Literal["ddim", "ddpm", "dpm++2m"] = Field(SamplerSettings.sampler,
                                                        description="dpm++2m (DPM-Solver++(2M)) or ddim, each "
                                                                    "`steps` steps, or ddpm (all T steps)")
    steps: int = Field(SamplerSettings.steps, ge=1, description="network evaluations per image of dpm++2m or ddim "
                                                                 "(1 to the model's T)")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="noise seed; default: a random one, returned")
    size: str | None = Field(None, description=f"'{IMAGE_SIZE}', the models' own size and the only one served; "
                                               f"OpenAI's clients send it")
    user: str | None = Field(None, description="the end user's id, as OpenAI's API takes it; accepted and ignored")


class AudioGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="the audio model's id (GET /v1/models); it must be a VAE")
    n: int = Field(1, ge=1, description="5-s clips to generate (at most the server's limit, 4)")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="latent seed; default: a random one, returned")
    response_format: Literal["b64_wav"] = Field("b64_wav", description="WAVs as base64 strings (the only format)")


def image_batcher(image_model, options):
    """The ImageBatcher of the image model (None without one); someone must call its run()."""
    if image_model is None:
        return None

    def max_batch(settings):
        return options.max_batch or image_model.sampler.batch_size(settings.guidance_scale > 0)
    return ImageBatcher(image_model.draw, max_batch, options.max_wait_ms / 1000, options.max_queue, options.batching)


def create_app(image_model, audio_model, options, device, batcher):
    """The ASGI application over the loaded models (either may be None); `batcher`: the image model's
    image_batcher, run by the caller."""
    audio_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audio")
    audio_pending = [0]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if batcher:
            batcher.stop()
        audio_worker.shutdown(wait=False, cancel_futures=True)

    def check_key(request: Request):
        if options.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), options.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           "authentication_error", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="ImageAudioGen API", lifespan=lifespan, dependencies=[Depends(check_key)],
                  description="Digits from the class-conditional DDPM (or GAN), music through the mel autoencoder, "
                              "new music from the mel VAE.")
    install_error_handlers(app)

    @app.get("/health", summary="Which models are loaded, on which device, and whether the server is ready")
    async def health():
        models = [m.health() for m in (image_model, audio_model) if m is not None]
        return {"ready": bool(models) and (batcher is None or batcher.running), "device": str(device),
                "models": models, "image_queue": batcher.stats() if batcher else None,
                "audio_queue": {"pending": audio_pending[0], "max_queue": options.max_audio_queue}}

    @app.get("/v1/models", summary="The loaded models with their measured scores")
    async def list_models():
        return {"object": "list", "data": [m.card() for m in (image_model, audio_model) if m is not None]}

    @app.post("/v1/images/generations", summary="Draw images of one class (OpenAI images API shape)")
    async def generate_images(body: ImageRequest):
        model = require_model(image_model, body.model, "image")
        if body.size is not None and body.size != IMAGE_SIZE:
            raise ApiError(400, f"size '{body.size}' is not served: {model.id} draws {IMAGE_SIZE} images only "
                                f"(send size '{IMAGE_SIZE}' or none); upscaled digits would add no detail", param="size")
        if body.n > options.max_images:
            raise ApiError(400, f"n = {body.n} is above this server's limit of {options.max_images} images "
                                f"per request", param="n")
        if model.kind == "gan":
            given = sorted({"guidance_scale", "sampler", "steps"} & body.model_fields_set)
            if given:
                raise ApiError(400, f"{given[0]} does not apply to {model.id}: a GAN draws in one pass, without "
                                    f"sampler steps or guidance", param=given[0])
        elif body.sampler != "ddpm" and body.steps > model.sampler.num_timesteps:
            raise ApiError(400, f"steps = {body.steps}: {body.sampler} takes 1 to {model.sampler.num_timesteps} steps",
                           param="steps")
        try:
            label = model.label_of(body.prompt)
        except BadRequest as err:
            raise ApiError(400, str(err), param="prompt") from None
        if body.guidance_scale is not None and not (model.conditional and label is not None):
            raise ApiError(400, "guidance_scale needs a class prompt on a class-conditional model",
                           param="guidance_scale")
        seed = secrets.randbelow(2**31) if body.seed is None else body.seed
        w = body.guidance_scale if body.guidance_scale is not None else model.default_guidance
        guided = model.kind == "ddpm" and model.conditional and label is not None and w > 0
        # the batching key: everything but the seed (each request's noise comes from its own generator)
        settings = SamplerSettings(body.sampler, body.steps, 0.0, w if guided else 0.0, None)
        try:
            report = await batcher.submit(Job(label, body.n, model.noise_seed(label, seed), settings))
        except QueueFull as err:
            raise ApiError(503, str(err), "server_busy", headers={"Retry-After": str(err.retry_after)}) from None
        class_name = "random" if label is None else class_names(model.dataset)[label]
        return {"created": int(time.time()), "model": model.id,
                "data": [{"b64_json": base64.b64encode(png).decode(), "class": class_name} for png in report.images],
                "class": class_name, "seed": seed, "sampler": model.sampler.name(settings, guided),
                "guidance_scale": w if guided else None, "sampling_seconds": report.seconds,
                "queued_seconds": report.queued,
                "batch": {"requests": report.requests, "images": report.batch_images}}

    @app.post("/v1/audio/reconstructions", summary="Reconstruct a clip of an uploaded recording",
              response_model=None)
    async def reconstruct_audio(file: UploadFile = File(..., description="any audio file FFmpeg decodes"),
                                start: float = Form(0.0, ge=0, description="window start in seconds"),
                                oracle: bool = Form(False, description="also return the oracle (the true mel through the same inverse)"),
                                response_format: Literal["json", "wav"] = Form(
                                    "json", description="json (base64 WAVs and scores) or wav (the "
                                                        "reconstruction; scores in the X-Scores header)"),
                                model: str | None = Form(None, description="the audio model's id")):
        audio = require_model(audio_model, model, "audio")
        data = await file.read()
        if not data:
            raise ApiError(400, f"{file.filename or 'the upload'} is empty", param="file")
        if audio_pending[0] >= options.max_audio_queue:
            raise ApiError(503, "the server is busy: retry after 5 s", "server_busy", headers={"Retry-After": "5"})
        audio_pending[0] += 1
        try:
            loop = asyncio.get_running_loop()
            wave_and_result = await loop.run_in_executor(
                audio_worker, reconstruct_upload, audio, data, file.filename or "", start, oracle)
        except UnusableAudio as err:
            raise ApiError(400, f"{file.filename or 'the upload'}: {err}", param="file") from None
        except BadRequest as err:
            raise ApiError(400, f"{file.filename or 'the upload'}: {err}", param="start") from None
        finally:
            audio_pending[0] -= 1
        reconstruction, oracle_wav, scores, seconds = wave_and_result
        scores = {**scores, "seconds": seconds, "start": start, "clip_seconds": audio.clip_seconds,
                  "sample_rate": audio.transform.sample_rate, "model": audio.id}
        if response_format == "wav":
            return Response(reconstruction, media_type="audio/wav", headers={"X-Scores": json.dumps(scores)})
        return {**scores, "reconstruction": {"b64_wav": base64.b64encode(reconstruction).decode()},
                "oracle": {"b64_wav": base64.b64encode(oracle_wav).decode()} if oracle_wav else None}

    @app.post("/v1/audio/generations", summary="Generate new clips from the VAE's prior")
    async def generate_audio(body: AudioGenerationRequest):
        audio = require_model(audio_model, body.model, "audio")
        if audio.kind != "vae":
            raise ApiError(400, f"{audio.id} is a plain autoencoder: its latent has no prior to sample from; start "
                                f"the server with a VAE checkpoint (audio_gen.py --model vae)", param="model")
        if body.n > options.max_clips:
            raise ApiError(400, f"n = {body.n} is above this server's limit of {options.max_clips} clips per request",
                           param="n")
        if audio_pending[0] >= options.max_audio_queue:
            raise ApiError(503, "the server is busy: retry after 5 s", "server_busy", headers={"Retry-After": "5"})
        seed = secrets.randbelow(2**31) if body.seed is None else body.seed
        audio_pending[0] += 1
        try:
            begin = time.perf_counter()
            wavs = await asyncio.get_running_loop().run_in_executor(audio_worker, audio.generate, body.n, seed)
        finally:
            audio_pending[0] -= 1
        return {"created": int(time.time()), "model": audio.id, "seed": seed, "prior": audio.prior_name,
                "sample_rate": audio.transform.sample_rate, "clip_seconds": audio.clip_seconds,
                "seconds": time.perf_counter() - begin,
                "data": [{"b64_wav": base64.b64encode(w).decode()} for w in wavs]}

    return app


def reconstruct_upload(audio, data, name, start, with_oracle):
    """In the audio worker: decode, reconstruct and score; (WAV, oracle WAV or None, scores, seconds)."""
    begin = time.perf_counter()
    wave = audio.decode(data, name)
    reconstruction, oracle, scores = audio.reconstruct(wave, start, with_oracle)
    return reconstruction, oracle, scores, time.perf_counter() - begin


def require_model(loaded, asked, kind):
    """The loaded model of this kind, if `asked` (an id, or None) names it; else 404 / 400."""
    if loaded is None:
        raise ApiError(400, f"no {kind} model is loaded on this server (start it with its checkpoint)",
                       param="model")
    if asked is not None and asked != loaded.id:
        raise ApiError(404, f"unknown model {asked!r}: this server's {kind} model is {loaded.id!r} "
                            f"(GET /v1/models)", "model_not_found", param="model")
    return loaded


def install_error_handlers(app):
    """Every error as JSON with a 4xx status and a sentence; a bug as a 500 without its traceback."""

    @app.exception_handler(HTTPException)
    async def http_error(request, err):
        kind = getattr(err, "kind", "invalid_request_error")
        return JSONResponse(error_body(str(err.detail), kind, getattr(err, "param", None)), err.status_code,
                            headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, err):
        problems = []
        for e in err.errors():
            where = ".".join(str(part) for part in e["loc"] if part not in ("body",)) or "body"
            if e["type"] == "json_invalid":
                problems.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', e['msg'])})")
            else:
                problems.append(f"{where}: {e['msg']}")
        fields = [str(e["loc"][-1]) for e in err.errors() if e["type"] != "json_invalid" and len(e["loc"]) > 1]
        return JSONResponse(error_body("; ".join(problems), "invalid_request_error", fields[0] if fields else None),
                            400)

    @app.exception_handler(Exception)
    async def internal_error(request, err):
        log.exception("error in %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error ({type(err).__name__}); the details are in the "
                                       f"server's log", "server_error"), 500)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413. A declared Content-Length over the limit
    is refused before any of the body is read; a chunked body is counted as it arrives."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes
        self.message = f"the request body is over this server's limit of {max_bytes / 2**20:g} MB"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self.refuse(send)
        received, started = 0, False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # an HTTPException, so that FastAPI's body parsing passes it on
                    raise ApiError(413, self.message, "request_too_large")
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except ApiError:
            if not started:
                await self.refuse(send)

    async def refuse(self, send):
        body = json.dumps(error_body(self.message, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
